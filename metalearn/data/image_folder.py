"""A folder of class folders of images: `dataset=image_folder dataset.root=/data/defects`.

The layout is torchvision's ImageFolder: root/<class>/<image> (images at any depth inside their
class's folder; any format Pillow reads, any size, grey or colour, any number per class). The
meta-train / meta-val / meta-test classes come from, in this order:

1. subfolders root/train, root/val and root/test, each a folder of class folders;
2. `split_file`: a CSV of `class,split` lines (split: train, val or test); a class named there
   that is not a folder is an error, a class folder it does not name is left out, with a warning;
3. `split_fractions`: the class folders shuffled with `split_seed` and cut in these proportions.

Images are decoded once into a memory-mapped cache under `<data_dir>/image_folder/` (one per
image size and channels; see metalearn/data/image_cache.py), rebuilt when files are added,
removed or changed.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from metalearn.data.augment import Augment
from metalearn.data.image_cache import IMAGE_EXTENSIONS, files_fingerprint, image_cache
from metalearn.data.task_family import SPLITS, ClassificationTaskFamily
from metalearn.errors import UserError

log = logging.getLogger(__name__)


def class_images(folder: Path) -> list[Path]:
    """The images inside a class folder, at any depth, in name order (hidden files left out)."""
    return sorted(path for path in folder.rglob("*")
                  if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
                  and path.is_file())


def class_folders(root: Path) -> dict[str, Path]:
    """The class folders of root (the folders holding images), by name."""
    return {folder.name: folder for folder in sorted(root.iterdir())
            if folder.is_dir() and not folder.name.startswith(".") and class_images(folder)}


def read_split_file(path: Path, classes: Sequence[str]) -> dict[str, list[str]]:
    """`class,split` lines (a header line `class,split` is allowed) -> split -> classes."""
    if not path.is_file():
        raise UserError(f"dataset.split_file={str(path)!r}: no such file")
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    with path.open(newline="") as file:
        for number, row in enumerate(csv.reader(file), start=1):
            if not row or row == ["class", "split"]:
                continue
            if len(row) != 2 or row[1].strip() not in SPLITS:
                raise UserError(f"dataset.split_file {path}, line {number}: expected "
                                f"'class,split' with split one of {', '.join(SPLITS)}; got "
                                f"{','.join(row)!r}")
            name, split = row[0].strip(), row[1].strip()
            if name not in classes:
                raise UserError(f"dataset.split_file {path}, line {number}: class {name!r} is "
                                "not a class folder of dataset.root")
            splits[split].append(name)
    named = {name for names in splits.values() for name in names}
    left_out = [name for name in classes if name not in named]
    if left_out:
        log.warning("dataset.split_file names no split for %d class folders, left out: %s",
                    len(left_out), ", ".join(left_out[:20]))
    return splits


def split_by_fractions(classes: Sequence[str], fractions: Sequence[float],
                       seed: int) -> dict[str, list[str]]:
    """The classes shuffled with `seed` and cut into train, val, test in these proportions."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise UserError(f"dataset.split_fractions={list(fractions)} must be three numbers > 0 "
                        "(train, val, test)")
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [classes[i] for i in order]
    total = sum(fractions)
    train = round(len(classes) * fractions[0] / total)
    val = round(len(classes) * fractions[1] / total)
    parts = {"train": shuffled[:train], "val": shuffled[train:train + val],
             "test": shuffled[train + val:]}
    empty = [split for split, names in parts.items() if not names]
    if empty:
        raise UserError(f"dataset.split_fractions={list(fractions)} leaves no class of the "
                        f"{len(classes)} in the {empty[0]} split; use more classes or other "
                        "fractions")
    return parts


class ImageFolder(ClassificationTaskFamily):
    """Args:
        root: the folder of class folders (or of train/, val/, test/ folders of class folders).
        data_dir: where the cache goes (`<data_dir>/image_folder/<root's name and a hash>/`).
        image_size: images are resized to image_size x image_size.
        channels: 1 (grey) or 3 (RGB).
        split_file: a CSV of class,split lines, or null.
        split_fractions: train, val and test shares of the classes, when neither train/val/test
            folders nor a split file say.
        split_seed: seeds the shuffle of the classes before they are cut by split_fractions.
        min_examples: leave out (with a warning listing them) the classes with fewer images; null
            keeps every class, and a task shape larger than the smallest class is an error.
        normalize: per-channel [mean, std] applied to the pixels in [0, 1], or null.
        augment: the augmentation of meta-training episodes (dataset.augment), or null.
    """

    drops_small_classes = True

    def __init__(self, root: str, data_dir: str, image_size: int = 84, channels: int = 3,
                 split_file: str | None = None,
                 split_fractions: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
                 min_examples: int | None = None,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                 augment: Augment | None = None):
        if channels not in (1, 3):
            raise UserError(f"dataset.channels={channels} must be 1 (grey) or 3 (RGB)")
        if image_size < 1:
            raise UserError(f"dataset.image_size={image_size} must be a positive number of pixels")
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise UserError(f"dataset.root={root!r}: no such folder")
        folders = self.split_folders(root_path, split_file, split_fractions, split_seed)
        images = {split: {name: class_images(folder) for name, folder in classes.items()}
                  for split, classes in folders.items()}
        images = {split: self.drop_small(classes, min_examples, split)
                  for split, classes in images.items()}
        files = [path for classes in images.values() for paths in classes.values()
                 for path in paths]
        key = hashlib.sha1(str(root_path.resolve()).encode()).hexdigest()[:10]
        cache = (Path(data_dir) / "image_folder" / f"{root_path.name}_{key}"
                 / f"{image_size}px_{channels}ch")  # one per size: switching rebuilds nothing
        fingerprint = files_fingerprint(files, root_path) + hashlib.sha1(
            repr({split: list(classes) for split, classes in images.items()}).encode()).hexdigest()
        splits = image_cache(cache, fingerprint, images.__getitem__, image_size, channels)
        super().__init__(splits, normalize, augment)

    @staticmethod
    def split_folders(root: Path, split_file: str | None, fractions: Sequence[float],
                      seed: int) -> dict[str, dict[str, Path]]:
        """split -> class name -> class folder."""
        if all((root / split).is_dir() for split in SPLITS):
            splits = {split: class_folders(root / split) for split in SPLITS}
            empty = [split for split, classes in splits.items() if not classes]
            if empty:
                raise UserError(f"dataset.root={str(root)!r}: {root / empty[0]} holds no class "
                                "folders of images")
            return splits
        classes = class_folders(root)
        if not classes:
            raise UserError(f"dataset.root={str(root)!r} holds no class folders of images "
                            f"(expected root/<class>/<image>, images ending in "
                            f"{', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
        names = list(classes)
        by_split = (read_split_file(Path(split_file), names) if split_file
                    else split_by_fractions(names, fractions, seed))
        return {split: {name: classes[name] for name in sorted(by_split[split])}
                for split in SPLITS}

    @staticmethod
    def drop_small(classes: dict[str, list[Path]], min_examples: int | None,
                   split: str) -> dict[str, list[Path]]:
        if min_examples is None:
            return classes
        small = {name: len(paths) for name, paths in classes.items() if len(paths) < min_examples}
        if small:
            log.warning("dataset.min_examples=%d leaves out %d %s classes: %s", min_examples,
                        len(small), split, ", ".join(f"{name} ({count})"
                                                     for name, count in small.items()))
        kept = {name: paths for name, paths in classes.items() if name not in small}
        if not kept:
            raise UserError(f"dataset.min_examples={min_examples} leaves no class in the {split} "
                            "split")
        return kept
