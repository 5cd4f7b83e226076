"""tiered-ImageNet (Ren et al. 2018, "Meta-Learning for Semi-Supervised Few-Shot
Classification"): 608 ImageNet classes (779,165 colour images, 84 x 84) grouped into 34
categories, the split made by category so that meta-train, meta-val and meta-test share none:
351 classes (20 categories) for meta-train, 97 (6) for meta-val, 160 (8) for meta-test.

`root` holds the published files, for split in train, val, test:
- `{split}_images_png.pkl`: a list of the split's images, each PNG-encoded (bytes, or a uint8
  numpy array of those bytes as in the authors' release);
- `{split}_labels.pkl`: a dict whose `label_specific` gives each image's class index (0 ..
  classes - 1 within the split) and, when present, `label_specific_str` the classes' names.
learn2learn's copies are on zenodo as ZENODO/tiered-imagenet-<file> (accepted under either
name); they are 12 GB in all, so download=true fetches them only when asked.

Images are decoded once into a memory-mapped cache, <data_dir>/tiered_imagenet/cache/<S>px_<C>ch/
(16 GB at 84 x 84 RGB, more than memory on many machines: only the pages in use are read), one
cache per split: its pickles are read while its cache is built (the PNGs are decoded in parallel
chunks straight into the memory map), so only one split's encoded images are in memory at a time
(the meta-train split's, about 7 GB) and the decoded images never are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metalearn.data.augment import Augment
from metalearn.data.benchmark_files import (
    ZENODO,
    cache_folder,
    check_disjoint,
    check_settings,
    class_rows,
    find_file,
    fingerprint,
    read_pickle,
    text,
)
from metalearn.data.image_cache import SplitSources, image_cache
from metalearn.data.task_family import SPLITS, ClassificationTaskFamily
from metalearn.errors import UserError

NAME = "tiered-ImageNet"
FILES = ("images_png", "labels")
NOTE = "the six files of tiered-ImageNet are 12 GB in all"


def find_files(root: Path, download: bool) -> dict[str, tuple[Path, Path]]:
    """split -> (its images pickle, its labels pickle), each downloaded when missing and
    download; every file is looked for before any is read."""
    found = {}
    for split in SPLITS:
        paths = []
        for kind in FILES:
            names = (f"{split}_{kind}.pkl", f"tiered-imagenet-{split}_{kind}.pkl")
            paths.append(find_file(NAME, root, names, f"{ZENODO}/{names[1]}", download, NOTE))
        found[split] = (paths[0], paths[1])
    return found


def encoded(images: list, path: Path) -> list:
    """The PNG bytes of each image of the list, in place (each array of encoded bytes freed as
    it is replaced, so the split is never held twice)."""
    for index, image in enumerate(images):
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 1:
            images[index] = image.tobytes()
        elif not isinstance(image, bytes):
            raise UserError(f"{NAME}: {path}: image {index} is a {type(image).__name__}, not "
                            "PNG-encoded bytes")
    return images


def read_split(split: str, images_path: Path, labels_path: Path) -> SplitSources:
    """One split's pickles -> class -> its images' PNG bytes."""
    labels = read_pickle(NAME, labels_path)
    specific = labels.get("label_specific") if isinstance(labels, dict) else None
    try:
        specific = np.asarray(specific, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        specific = None
    if specific is None or len(specific) == 0 or specific.min() < 0:
        raise UserError(f"{NAME}: {labels_path} is not a tiered-ImageNet labels pickle (expected "
                        "a dict with label_specific, each image's class index)")
    names = labels.get("label_specific_str")
    if names is not None and len(names) <= specific.max():
        raise UserError(f"{NAME}: {labels_path}: label_specific_str names {len(names)} classes, "
                        f"but label_specific goes up to {specific.max()}")
    images = read_pickle(NAME, images_path)
    if isinstance(images, (tuple, np.ndarray)):
        images = list(images)
    if not isinstance(images, list) or len(images) != len(specific):
        count = len(images) if isinstance(images, list) else "no"
        raise UserError(f"{NAME}: {images_path} holds {count} images in a list, but "
                        f"{labels_path} labels {len(specific)}")
    images = encoded(images, images_path)
    return {(str(text(names[label])) if names is not None else f"{split} class {label}"):
            [images[row] for row in rows] for label, rows in class_rows(specific).items()}


class TieredImageNet(ClassificationTaskFamily):
    """tiered-ImageNet few-shot tasks (the module docstring has the split and the files).

    Args:
        root: the folder holding the six pickles.
        data_dir: where the cache goes (<data_dir>/tiered_imagenet/cache/<S>px_<C>ch/).
        image_size: images are resized to image_size x image_size (84: as published).
        channels: 1 (grey) or 3 (RGB).
        normalize: per-channel [means, stds] applied to the pixels in [0, 1], or null.
        augment: the augmentation of meta-training episodes (dataset.augment), or null.
        download: download missing pickles from zenodo (12 GB in all).
    """

    def __init__(self, root: str, data_dir: str, image_size: int = 84, channels: int = 3,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = (
                     (0.4721, 0.4533, 0.4100), (0.2772, 0.2678, 0.2845)),
                 augment: Augment | None = None,
                 download: bool = False):
        check_settings(image_size, channels, normalize)
        root_path = Path(root).expanduser()
        files = find_files(root_path, download)
        # the cache reads one split's pickles at a time
        splits = image_cache(cache_folder(data_dir, "tiered_imagenet", image_size, channels),
                             fingerprint([p for paths in files.values() for p in paths], root_path),
                             lambda split: read_split(split, *files[split]), image_size, channels)
        check_disjoint(NAME, {split: part.names for split, part in splits.items()},
                       {split: paths[1] for split, paths in files.items()})
        super().__init__(splits, normalize, augment)
