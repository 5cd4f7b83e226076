"""FC100 (Oreshkin et al. 2018, "TADAM: Task dependent adaptive metric for improved few-shot
learning"): CIFAR-100's 100 classes (600 colour images each, 32 x 32) split by superclass, so
that meta-train, meta-val and meta-test share none: 60 classes from 12 superclasses for
meta-train, 20 from 4 for meta-val, 20 from 4 for meta-test (SUPERCLASSES below: CIFAR-100's
coarse label indices, the split of the TADAM authors' code).

`root` holds either (the first when both are there):
- the pickles `FC100_train.pickle`, `FC100_val.pickle`, `FC100_test.pickle` (MetaOptNet's,
  RELEASE_URL, `fc100.zip`, unpacked in root when it lies there): dicts with 'data', uint8
  [N, 32, 32, 3], and 'labels', each image's class (CIFAR-100's fine label), pickled under
  Python 2;
- CIFAR-100's python version, `cifar-100-python/` (CIFAR100_URL, `cifar-100-python.tar.gz`,
  unpacked in root when it lies there): the pickles `train`, `test` and `meta` (see
  benchmark_files.read_cifar100), both train and test images used, the classes split by their
  superclass.
With download=true and neither there, fc100.zip is downloaded from zenodo (learn2learn's copy)
and unpacked.

Images are decoded once into a memory-mapped cache, <data_dir>/fc100/cache/<S>px_<C>ch/
(metalearn/data/image_cache.py), rebuilt when the files change.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from metalearn.data.augment import Augment
from metalearn.data.benchmark_files import (
    CIFAR100_FOLDER,
    CIFAR100_SIZE,
    CIFAR100_URL,
    ZENODO,
    Sources,
    cached_splits,
    check_settings,
    cifar100_files,
    class_rows,
    find_unpacked,
    read_cifar100,
    read_pickle,
    str_keys,
    url_name,
)
from metalearn.data.task_family import SPLITS, ClassificationTaskFamily
from metalearn.errors import UserError

NAME = "FC100"
RELEASE_URL = f"{ZENODO}/fc100.zip"
PICKLE = "FC100_{split}.pickle"
#: split -> CIFAR-100 coarse labels (superclasses): train 1 fish, 2 flowers, 3 food containers,
#: 4 fruit and vegetables, 5 household electrical devices, 6 household furniture, 9 large
#: man-made outdoor things, 10 large natural outdoor scenes, 15 reptiles, 17 trees, 18 vehicles 1,
#: 19 vehicles 2; val 8 large carnivores, 11 large omnivores and herbivores, 13 non-insect
#: invertebrates, 16 small mammals; test 0 aquatic mammals, 7 insects, 12 medium mammals, 14 people
SUPERCLASSES = {"train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19), "val": (8, 11, 13, 16),
                "test": (0, 7, 12, 14)}


def find_pickles(root: Path, download: bool) -> dict[str, Path]:
    """split -> its FC100 pickle, unpacked from fc100.zip (downloaded when download) if missing."""
    note = f"or CIFAR-100's python version, {CIFAR100_URL}, unpacked there"
    return {split: find_unpacked(NAME, root, PICKLE.format(split=split), RELEASE_URL, download,
                                 note=note) for split in SPLITS}


def read_fc100_pickles(files: dict[str, Path]) -> Sources:
    """split -> class ('label <fine label>') -> images (uint8 [32, 32, 3]) from the pickles."""
    splits: dict[str, dict[str, list[np.ndarray]]] = {}
    owner: dict[int, str] = {}
    for split, path in files.items():
        data = str_keys(read_pickle(NAME, path))
        images = data.get("data") if isinstance(data, dict) else None
        labels = data.get("labels") if isinstance(data, dict) else None
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
                and images.shape[-1] == 3 and labels is not None and len(labels) == len(images)
                and len(images) > 0):
            raise UserError(f"{NAME}: {path} is not an FC100 pickle (expected a dict with 'data', "
                            "uint8 [N, 32, 32, 3], and 'labels', N class labels)")
        splits[split] = {}
        for label, rows in class_rows(np.asarray(labels, dtype=np.int64)).items():
            if label in owner:
                raise UserError(f"{NAME}: {path} holds images of label {label}, which "
                                f"{files[owner[label]]} holds too; classes must not share splits")
            owner[label] = split
            splits[split][f"label {label}"] = list(images[rows])
    return splits


def split_cifar100(files: Sequence[Path]) -> Sources:
    """split -> class -> images (uint8 [32, 32, 3]) from CIFAR-100's pickles, by superclass."""
    data = read_cifar100(NAME, files)
    splits: dict[str, dict[str, list[np.ndarray]]] = {split: {} for split in SUPERCLASSES}
    split_of = {coarse: split for split, coarses in SUPERCLASSES.items() for coarse in coarses}
    for label, rows in class_rows(data.fine_labels).items():
        coarse = np.unique(data.coarse_labels[rows])
        if len(coarse) != 1 or int(coarse[0]) not in split_of:
            raise UserError(f"{NAME}: in {files[0].parent}, the images of fine label {label} have "
                            f"coarse labels {coarse.tolist()}; expected one of 0 to 19, as in "
                            "CIFAR-100")
        splits[split_of[int(coarse[0])]][data.fine_names[label]] = list(data.images[rows])
    empty = [split for split, classes in splits.items() if not classes]
    if empty:
        raise UserError(f"{NAME}: {files[0].parent} holds no class of the {empty[0]} split's "
                        f"superclasses {SUPERCLASSES[empty[0]]}; expected CIFAR-100")
    return splits


class FC100(ClassificationTaskFamily):
    """FC100 few-shot tasks (the module docstring has the split and the file layouts).

    Args:
        root: the folder holding the FC100 pickles or cifar-100-python/ (or their archives).
        data_dir: where the cache goes (<data_dir>/fc100/cache/<S>px_<C>ch/).
        image_size: images are resized to image_size x image_size (32: as published).
        channels: 1 (grey) or 3 (RGB).
        normalize: per-channel [means, stds] applied to the pixels in [0, 1], or null.
        augment: the augmentation of meta-training episodes (dataset.augment), or null.
        download: download and unpack fc100.zip when neither layout is there.
    """

    def __init__(self, root: str, data_dir: str, image_size: int = CIFAR100_SIZE,
                 channels: int = 3,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = (
                     (0.5074, 0.4867, 0.4411), (0.2675, 0.2566, 0.2763)),
                 augment: Augment | None = None,
                 download: bool = True):
        check_settings(image_size, channels, normalize)
        root_path = Path(root).expanduser()
        pickles = ((root_path / url_name(RELEASE_URL)).is_file()
                   or any((root_path / PICKLE.format(split=split)).is_file() for split in SPLITS))
        cifar100 = ((root_path / CIFAR100_FOLDER).is_dir()
                    or (root_path / url_name(CIFAR100_URL)).is_file())
        if pickles or not cifar100:  # the pickles are read only when the cache is built
            found = find_pickles(root_path, download)
            layout, files = "pickles", list(found.values())
            sources = partial(read_fc100_pickles, found)
        else:
            files = cifar100_files(NAME, root_path, download)
            layout, sources = ("cifar-100-python", SUPERCLASSES), partial(split_cifar100, files)
        super().__init__(cached_splits(data_dir, "fc100", image_size, channels, files, root_path,
                                       sources, layout), normalize, augment)
