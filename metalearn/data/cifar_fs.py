"""CIFAR-FS (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers"): the
100 classes of CIFAR-100 (600 colour images each, 32 x 32) split at random into 64 classes for
meta-train, 16 for meta-val and 20 for meta-test (TRAIN, VAL, TEST below: the authors' split, as
torchmeta copies it in torchmeta/datasets/assets/cifar100/cifar-fs/).

`root` holds either (the first when both are there):
- the authors' release, `cifar100/` (RELEASE_URL, `cifar100.zip`, unpacked in root when it lies
  there): `cifar100/data/<class>/*.png` and the split, `cifar100/splits/bertinetto/{train,val,
  test}.txt`, a class name a line;
- CIFAR-100's python version, `cifar-100-python/` (CIFAR100_URL, `cifar-100-python.tar.gz`,
  unpacked in root when it lies there): the pickles `train`, `test` and `meta` (see
  benchmark_files.read_cifar100), both train and test images used, the classes split by the
  lists below.
With download=true and neither there, the authors' release is downloaded from zenodo (learn2learn's
copy) and unpacked.

Images are decoded once into a memory-mapped cache, <data_dir>/cifar_fs/cache/<S>px_<C>ch/
(metalearn/data/image_cache.py), rebuilt when the files change.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from metalearn.data.augment import Augment
from metalearn.data.benchmark_files import (
    CIFAR100_FOLDER,
    CIFAR100_URL,
    ZENODO,
    Sources,
    cached_splits,
    check_disjoint,
    check_settings,
    cifar100_files,
    class_rows,
    find_unpacked,
    missing,
    read_cifar100,
    url_name,
)
from metalearn.data.image_folder import class_images
from metalearn.data.task_family import SPLITS, ClassificationTaskFamily
from metalearn.errors import UserError

NAME = "CIFAR-FS"
RELEASE_URL = f"{ZENODO}/cifar100.zip"
RELEASE_FOLDER = "cifar100"
# the Bertinetto et al. split, CIFAR-100's fine label names
TRAIN = (
    "dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip", "bottle",
    "bowl", "can", "cup", "plate", "apple", "mushroom", "orange", "pear", "clock", "keyboard",
    "chair", "couch", "bee", "caterpillar", "cockroach", "bear", "lion", "tiger", "wolf", "bridge",
    "castle", "house", "road", "skyscraper", "cloud", "forest", "mountain", "elephant",
    "kangaroo", "porcupine", "possum", "raccoon", "skunk", "lobster", "spider", "boy", "girl",
    "dinosaur", "lizard", "snake", "turtle", "hamster", "mouse", "rabbit", "shrew", "squirrel",
    "oak_tree", "palm_tree", "pine_tree", "willow_tree", "bus", "train", "lawn_mower",
    "streetcar", "tank",
)
VAL = (
    "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea",
    "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
)
TEST = (
    "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard",
    "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle",
    "pickup_truck", "rocket",
)
SPLIT = {"train": TRAIN, "val": VAL, "test": TEST}


def read_release(root: Path, download: bool) -> tuple[list[Path], Sources]:
    """The authors' release: the files read and split -> class -> image files."""
    folder = find_unpacked(
        NAME, root, RELEASE_FOLDER, RELEASE_URL, download,
        what=f"{RELEASE_FOLDER}/ (nor {url_name(RELEASE_URL)}, nor {CIFAR100_FOLDER}/)",
        note=f"or CIFAR-100's python version, {CIFAR100_URL}, unpacked there")
    split_files = {split: folder / "splits" / "bertinetto" / f"{split}.txt" for split in SPLITS}
    splits: dict[str, dict[str, list[Path]]] = {}
    for split, path in split_files.items():
        if not path.is_file():
            raise missing(NAME, f"splits/bertinetto/{path.name}", folder, RELEASE_URL)
        splits[split] = {}
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            name = line.strip()
            if not name:
                continue
            images = class_images(folder / "data" / name) if (folder / "data" / name).is_dir() \
                else []
            if not images:
                raise UserError(f"{NAME}: {path}, line {number}: class {name!r} has no images in "
                                f"{folder / 'data' / name}")
            splits[split][name] = images
    check_disjoint(NAME, {split: list(classes) for split, classes in splits.items()},
                   split_files)
    files = list(split_files.values()) + [image for classes in splits.values()
                                          for images in classes.values() for image in images]
    return files, splits


def split_cifar100(files: Sequence[Path]) -> Sources:
    """split -> class -> images (uint8 [32, 32, 3]) from CIFAR-100's pickles, by SPLIT."""
    data = read_cifar100(NAME, files)
    rows = {data.fine_names[label]: rows for label, rows in class_rows(data.fine_labels).items()}
    for split, names in SPLIT.items():
        absent = [name for name in names if name not in rows]
        if absent:
            raise UserError(f"{NAME}: CIFAR-100's {files[0].parent} has no images of class "
                            f"{absent[0]!r} of the {split} split (fine label names in "
                            f"{files[2]}); expected CIFAR-100's 100 classes")
    return {split: {name: list(data.images[rows[name]]) for name in names}
            for split, names in SPLIT.items()}


class CifarFS(ClassificationTaskFamily):
    """CIFAR-FS few-shot tasks (the module docstring has the split and the file layouts).

    Args:
        root: the folder holding cifar100/ (the authors' release) or cifar-100-python/ (or
            their archives).
        data_dir: where the cache goes (<data_dir>/cifar_fs/cache/<S>px_<C>ch/).
        image_size: images are resized to image_size x image_size (32: as published).
        channels: 1 (grey) or 3 (RGB).
        normalize: per-channel [means, stds] applied to the pixels in [0, 1], or null.
        augment: the augmentation of meta-training episodes (dataset.augment), or null.
        download: download and unpack the authors' release when neither layout is there.
    """

    def __init__(self, root: str, data_dir: str, image_size: int = 32, channels: int = 3,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = (
                     (0.5074, 0.4867, 0.4411), (0.2675, 0.2566, 0.2763)),
                 augment: Augment | None = None,
                 download: bool = True):
        check_settings(image_size, channels, normalize)
        root_path = Path(root).expanduser()
        release = ((root_path / RELEASE_FOLDER).is_dir()
                   or (root_path / url_name(RELEASE_URL)).is_file())
        cifar100 = ((root_path / CIFAR100_FOLDER).is_dir()
                    or (root_path / url_name(CIFAR100_URL)).is_file())
        if release or not cifar100:
            files, splits = read_release(root_path, download)
            layout, sources = "release", splits.copy
        else:  # the pickles are read only when the cache is built
            files = cifar100_files(NAME, root_path, download)
            layout, sources = ("cifar-100-python", SPLIT), partial(split_cifar100, files)
        super().__init__(cached_splits(data_dir, "cifar_fs", image_size, channels, files,
                                       root_path, sources, layout), normalize, augment)
