"""mini-ImageNet (Vinyals et al. 2016, "Matching Networks for One Shot Learning") with the split of
Ravi & Larochelle 2017 ("Optimization as a Model for Few-Shot Learning"): 100 ImageNet classes of
600 colour images, 84 x 84; 64 classes for meta-train, 16 for meta-val, 20 for meta-test.

`root` holds either published layout (the first when root/images/ is a folder):

(a) `images/` and Ravi & Larochelle's split files `train.csv`, `val.csv`, `test.csv` (SPLIT_URL):
    a header line `filename,label`, then an image a line, images/<filename> (.jpg) of class
    <label> (an ImageNet synset such as n01532829);
(b) the pickles `mini-imagenet-cache-train.pkl`, `mini-imagenet-cache-val.pkl` (or
    `mini-imagenet-cache-validation.pkl`, its published name) and `mini-imagenet-cache-test.pkl`,
    each a dict with `image_data`, uint8 [N, 84, 84, 3], and `class_dict`, class name -> the rows
    of image_data that are its images. With download=true a missing pickle is downloaded from
    learn2learn's copy on zenodo (ZENODO/<name>, 1.3 GB in all).

Images are decoded once into a memory-mapped cache, <data_dir>/mini_imagenet/cache/<S>px_<C>ch/
(metalearn/data/image_cache.py), rebuilt when the files change.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from metalearn.data.augment import Augment
from metalearn.data.benchmark_files import (
    ZENODO,
    Sources,
    cached_splits,
    check_disjoint,
    check_settings,
    find_file,
    missing,
    read_pickle,
    text,
)
from metalearn.data.task_family import SPLITS, ClassificationTaskFamily
from metalearn.errors import UserError

NAME = "mini-ImageNet"
SPLIT_URL = "https://github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet"
#: split -> the pickle's names (the first as in the Ravi & Larochelle split, the last as published)
PICKLES = {"train": ("mini-imagenet-cache-train.pkl",),
           "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
           "test": ("mini-imagenet-cache-test.pkl",)}


def read_split_csv(path: Path, images: Path, present: set[str]) -> dict[str, list[Path]]:
    """A split file (`filename,label` lines after that header) -> class -> its images."""
    classes: dict[str, list[Path]] = {}
    try:
        with path.open(newline="") as file:
            rows = csv.reader(file)
            if [cell.strip() for cell in next(rows, [])] != ["filename", "label"]:
                raise UserError(f"{NAME}: {path} does not start with the header line "
                                "filename,label (Ravi & Larochelle's split file)")
            for number, row in enumerate(rows, start=2):
                if not row:
                    continue
                if len(row) != 2:
                    raise UserError(f"{NAME}: {path}, line {number}: expected filename,label; got "
                                    f"{','.join(row)!r}")
                filename, label = (cell.strip() for cell in row)
                if filename not in present:
                    raise UserError(f"{NAME}: {path}, line {number}: no image {filename} in "
                                    f"{images}")
                classes.setdefault(label, []).append(images / filename)
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{NAME}: {path} is not a CSV file of filename,label lines "
                        f"({error})") from None
    return classes


def read_folder_layout(root: Path) -> tuple[list[Path], Sources]:
    """Layout (a): the files read and split -> class -> image files."""
    images = root / "images"
    present = set(os.listdir(images))
    paths = {split: root / f"{split}.csv" for split in SPLITS}
    for path in paths.values():  # every file looked for before any is read
        if not path.is_file():
            raise missing(NAME, path.name, root, SPLIT_URL)
    splits = {split: read_split_csv(path, images, present) for split, path in paths.items()}
    check_disjoint(NAME, {split: list(classes) for split, classes in splits.items()}, paths)
    files = list(paths.values()) + [image for classes in splits.values()
                                    for class_images in classes.values() for image in class_images]
    return files, splits


def read_cache_pickle(path: Path) -> dict[str, list[np.ndarray]]:
    """One split's pickle -> class -> its images (rows of image_data, uint8 [H, W, 3])."""
    data = read_pickle(NAME, path)
    images = data.get("image_data") if isinstance(data, dict) else None
    classes = data.get("class_dict") if isinstance(data, dict) else None
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[-1] == 3 and isinstance(classes, dict)):
        raise UserError(f"{NAME}: {path} is not a mini-ImageNet pickle (expected a dict with "
                        "image_data, uint8 [N, 84, 84, 3], and class_dict, class name -> rows)")
    by_class = {}
    for name, rows in classes.items():
        try:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            rows = np.empty(0, dtype=np.int64)
        if len(rows) == 0 or rows.min() < 0 or rows.max() >= len(images):
            raise UserError(f"{NAME}: {path}: class_dict[{text(name)!r}] must list rows of "
                            f"image_data (0 to {len(images) - 1})")
        by_class[str(text(name))] = [images[row] for row in rows]
    return by_class


def find_pickles(root: Path, download: bool) -> dict[str, Path]:
    """Layout (b): split -> its pickle, downloaded when missing and download."""
    note = "or put images/ and train.csv, val.csv, test.csv there instead"
    return {split: find_file(NAME, root, names, f"{ZENODO}/{names[-1]}", download, note=note)
            for split, names in PICKLES.items()}


def read_pickles(paths: dict[str, Path]) -> Sources:
    """split -> class -> images, from layout (b)'s pickles."""
    splits = {split: read_cache_pickle(path) for split, path in paths.items()}
    check_disjoint(NAME, {split: list(classes) for split, classes in splits.items()}, paths)
    return splits


class MiniImageNet(ClassificationTaskFamily):
    """mini-ImageNet few-shot tasks (the module docstring has the split and the file layouts).

    Args:
        root: the folder holding images/ and the split CSVs, or the three pickles.
        data_dir: where the cache goes (<data_dir>/mini_imagenet/cache/<S>px_<C>ch/).
        image_size: images are resized to image_size x image_size (84: as published).
        channels: 1 (grey) or 3 (RGB).
        normalize: per-channel [means, stds] applied to the pixels in [0, 1], or null.
        augment: the augmentation of meta-training episodes (dataset.augment), or null.
        download: download a missing pickle (layout b) from zenodo.
    """

    def __init__(self, root: str, data_dir: str, image_size: int = 84, channels: int = 3,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = (
                     (0.4721, 0.4533, 0.4100), (0.2772, 0.2678, 0.2845)),
                 augment: Augment | None = None,
                 download: bool = True):
        check_settings(image_size, channels, normalize)
        root_path = Path(root).expanduser()
        if (root_path / "images").is_dir():
            files, splits = read_folder_layout(root_path)
            layout, sources = "images+csv", splits.copy
        else:  # the pickles are read only when the cache is built
            pickles = find_pickles(root_path, download)
            layout, files, sources = "pickles", list(pickles.values()), partial(read_pickles, pickles)
        super().__init__(cached_splits(data_dir, "mini_imagenet", image_size, channels, files,
                                       root_path, sources, layout), normalize, augment)
