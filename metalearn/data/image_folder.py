"""A folder of class folders of images: `dataset=image_folder dataset.root=/data/defects`.

The layout is torchvision's ImageFolder: root/<class>/<image> (images at any depth inside their
class's folder; any format Pillow reads, any size, grey or colour, any number per class). Hidden
files and folders (.ipynb_checkpoints, .DS_Store) are never read. The meta-train / meta-val /
meta-test classes come from, in this order:

1. split folders root/train, root/val and root/test, each a folder of class folders (a folder of
   one of these names that holds images and no folders is a class); one or two of them, or a
   split file beside them, is an error;
2. `split_file`: a CSV of `class,split` lines (split: train, val or test); a class named there
   that is not a class folder, or named in two splits, is an error; a class folder it does not
   name is left out, with a warning;
3. `split_fractions`: the class folders shuffled with `split_seed` and cut in these proportions.

A link to a folder is followed where it leads to images read nowhere else: never into or above
a folder read already (the root, a split folder, where another link led), which would read
images twice, in a class of every image, or forever. What is left out is named in a warning:
such links, folders holding no images, images outside any class folder.

Settings left `auto` are chosen from the images and said in one line of the run's log (the
survey that reads them is recorded beside the cache: metalearn/data/image_cache.py):
- channels: 1 when every image is grey (a grey mode, or colour channels within GREY_SPREAD
  levels of each other at every pixel: grey scans saved as RGB JPEGs), else 3;
- image_size: a quarter of the images' median shorter side, within 28-84 px: the benchmarks'
  own choices (Omniglot's 105-px drawings train at 28 px, ImageNet's photos of about 400 px at
  84); smaller images are enlarged to 28 px, which every backbone takes;
- augment: none for grey images, the natural-image augmentation (metalearn/data/augment.py) for
  colour ones. On drawings (Omniglot characters saved as RGB JPEGs of 80-120 px) it cost
  ProtoNet 2.3 and 3.0 points of 5-way 1-shot accuracy with two training seeds
  (experiments/image_folder_defaults.py); there is no few-shot set of photos here to measure,
  so colour keeps the natural-image datasets' default.

Images are decoded once into a memory-mapped cache under `<data_dir>/image_folder/` (one per
image size and channels; see metalearn/data/image_cache.py), rebuilt when files are added,
removed or changed.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from metalearn.data.augment import Augment
from metalearn.data.image_cache import (
    IMAGE_EXTENSIONS,
    ImageSurvey,
    files_fingerprint,
    image_cache,
    image_survey,
)
from metalearn.data.task_family import SPLITS, ClassificationTaskFamily
from metalearn.errors import UserError

log = logging.getLogger(__name__)
AUTO = "auto"
#: auto image_size: the images' median shorter side divided by this, within AUTO_SIZES
AUTO_SIZE_DIVISOR = 4
AUTO_SIZES = (28, 84)
#: a warning names at most this many of what it leaves out
SHOWN = 20
#: split -> class name -> the class's images
SplitImages = dict[str, dict[str, list[Path]]]


def real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def overlap(folder: Path, other: Path) -> bool:
    """Whether one of two real folders is the other or inside it."""
    return folder == other or folder in other.parents or other in folder.parents


def scan(folder: Path) -> list[os.DirEntry]:
    """The entries of a folder but hidden ones (.ipynb_checkpoints, .DS_Store), in name order."""
    try:
        with os.scandir(folder) as entries:
            return sorted((entry for entry in entries if not entry.name.startswith(".")),
                          key=lambda entry: entry.name)
    except OSError as error:
        raise UserError(f"cannot read the folder {folder} ({error.strerror})") from None


def listed(names: Sequence[str]) -> str:
    more = f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


class FolderReader:
    """Lists the images of a dataset's class folders, following a link to a folder only where
    it leads to images read nowhere else, and keeps what it leaves out for one warning each.

    Args:
        root: dataset.root; names in warnings are relative to it.
        read: the folders whose folders are the classes (the root, or its split folders).
    """

    def __init__(self, root: Path, read: Sequence[Path]):
        self.root = root
        #: the real folders whose images are read: `read`, and where followed links led
        self.reached = [real(folder) for folder in read]
        self.unfollowed: list[str] = []  # "link -> target"
        self.empty: list[str] = []  # folders holding no images
        self.loose: list[str] = []  # images outside any class folder
        self.beside: list[str] = []  # folders and images beside the split folders

    def shown(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def classes(self, parent: Path) -> dict[str, list[Path]]:
        """The classes of `parent`: its folders holding images, by name, each with its images
        at any depth in name order."""
        folders, images = self.entries(parent, real(parent))
        self.loose += [self.shown(image) for image in images]
        classes = {}
        for folder, folder_real in folders:
            found = sorted(self.images(folder, folder_real))
            if found:
                classes[folder.name] = found
            else:
                self.empty.append(self.shown(folder))
        return classes

    def images(self, folder: Path, folder_real: Path) -> list[Path]:
        """The images in `folder` (whose real path is folder_real), at any depth."""
        folders, images = self.entries(folder, folder_real)
        for sub, sub_real in folders:
            images += self.images(sub, sub_real)
        return images

    def entries(self, folder: Path, folder_real: Path) -> tuple[list[tuple[Path, Path]],
                                                                 list[Path]]:
        """The folders directly in `folder` (each with its real path; links that may not be
        followed left out) and its images, hidden ones left out, in name order."""
        folders, images = [], []
        for entry in scan(folder):
            path = folder / entry.name
            if entry.is_dir():
                target = self.followed(path) if entry.is_symlink() else folder_real / entry.name
                if target is not None:
                    folders.append((path, target))
            elif path.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
                images.append(path)
        return folders, images

    def followed(self, link: Path) -> Path | None:
        """The real folder a link leads to, or None (noted) where it leads into or above a folder
        read already: the same images twice, or a loop."""
        target = real(link)
        if any(overlap(target, folder) for folder in self.reached):
            self.unfollowed.append(f"{self.shown(link)} -> {target}")
            return None
        self.reached.append(target)
        return target

    def warn(self) -> None:
        """One warning for each kind of thing left out."""
        for what, names in (
                ("links to folders not followed (each leads into or above a folder read "
                 "already)", self.unfollowed),
                (f"folders holding no images ({', '.join(IMAGE_EXTENSIONS)})", self.empty),
                ("images outside any class folder", self.loose),
                ("folders and images beside train/, val/ and test/", self.beside)):
            if names:
                log.warning("dataset.root=%s: left out %d %s: %s", self.root, len(names), what,
                            listed(names))


def class_images(folder: Path) -> list[Path]:
    """The images inside a class folder, at any depth, in name order (hidden files and folders
    left out, links to folders followed once, never into a loop)."""
    return sorted(FolderReader(folder, [folder]).images(folder, real(folder)))


def split_folders(root: Path) -> list[str]:
    """Which of root/train, root/val and root/test are split folders: folders that hold folders
    (one that holds only images is a class of that name)."""
    return [split for split in SPLITS if (root / split).is_dir()
            and any(entry.is_dir() for entry in scan(root / split))]


def read_layout(root: Path, split_file: str | None, fractions: Sequence[float],
                seed: int) -> SplitImages:
    """The classes of each split and their images, from the split folders, the split file or the
    fractions; what is left out is named in warnings."""
    present = split_folders(root)
    if present:
        return read_split_folders(root, present, split_file)
    reader = FolderReader(root, [root])
    classes = reader.classes(root)
    reader.warn()
    if not classes:
        raise UserError(f"dataset.root={str(root)!r} holds no class folders of images "
                        f"(expected root/<class>/<image>, images ending in "
                        f"{', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
    names = list(classes)
    by_split = (read_split_file(Path(split_file), names, partial(not_a_class_folder, root))
                if split_file else split_by_fractions(names, fractions, seed))
    return {split: {name: classes[name] for name in sorted(by_split[split])}
            for split in SPLITS}


def read_split_folders(root: Path, present: Sequence[str], split_file: str | None) -> SplitImages:
    """The classes of root/train, root/val and root/test."""
    def named(splits: Sequence[str], word: str) -> str:
        return f" {word} ".join(f"{split}/" for split in splits)

    missing = [split for split in SPLITS if split not in present]
    if missing:
        raise UserError(
            f"dataset.root={str(root)!r} has the split folder{'s' * (len(present) > 1)} "
            f"{named(present, 'and')} but no {named(missing, 'or')}; add "
            f"{named(missing, 'and')} (each a folder of class folders), or put every class "
            "folder directly in dataset.root, where dataset.split_file or "
            "dataset.split_fractions assigns the classes to splits")
    if split_file:
        raise UserError(f"dataset.split_file={split_file!r} cannot apply: dataset.root has "
                        "train/, val/ and test/ folders, which are its splits; set "
                        "dataset.split_file=null, or put the class folders directly in the root")
    reader = FolderReader(root, [root / split for split in SPLITS])
    reader.beside = [entry.name for entry in scan(root) if entry.name not in SPLITS and (
        entry.is_dir() or Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS)]
    splits = {split: reader.classes(root / split) for split in SPLITS}
    reader.warn()
    for split, classes in splits.items():
        if not classes:
            raise UserError(f"dataset.root={str(root)!r}: {root / split} holds no class "
                            "folders of images")
    warn_of_shared_names(splits)
    return splits


def warn_of_shared_names(splits: SplitImages) -> None:
    """Class names in more than one split folder: different classes that share a name are
    fine, but the same class in two splits (a classification dataset's train/val/test of the
    same classes) tests on classes the model was trained on."""
    shared = {}
    for split, classes in splits.items():
        for name in classes:
            shared.setdefault(name, []).append(split)
    shared = {name: where for name, where in shared.items() if len(where) > 1}
    if shared:
        log.warning("dataset.root: %d class names are in more than one split folder (%s); "
                    "if they are the same classes, meta-val and meta-test are not on new "
                    "classes", len(shared),
                    listed([f"{name}: {', '.join(where)}" for name, where in shared.items()]))


def not_a_class_folder(root: Path, name: str) -> str:
    why = "its folder holds no images" if (root / name).is_dir() else "there is no such folder"
    return f"not a class folder of dataset.root ({why})"


def read_split_file(path: Path, classes: Sequence[str], not_a_class: Callable[[str], str],
                    kind: str = "class folders") -> dict[str, list[str]]:
    """`class,split` lines (a header line `class,split` is allowed) -> split -> classes.
    `not_a_class(name)` says why a name of the file is none of `classes`; `kind` names them."""
    if not path.is_file():
        raise UserError(f"dataset.split_file={str(path)!r}: no such file")
    known = set(classes)
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    seen: dict[str, tuple[str, int]] = {}  # class -> its split and line
    with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: a spreadsheet's BOM
        for number, row in enumerate(csv.reader(file), start=1):
            if not row or row == ["class", "split"]:
                continue
            if len(row) != 2 or row[1].strip() not in SPLITS:
                raise UserError(f"dataset.split_file {path}, line {number}: expected "
                                f"'class,split' with split one of {', '.join(SPLITS)}; got "
                                f"{','.join(row)!r}")
            name, split = row[0].strip(), row[1].strip()
            if name not in known:
                raise UserError(f"dataset.split_file {path}, line {number}: class {name!r} is "
                                f"{not_a_class(name)}")
            if name in seen and seen[name][0] != split:
                raise UserError(f"dataset.split_file {path}: class {name!r} is in two splits "
                                f"({seen[name][0]} on line {seen[name][1]}, {split} on line "
                                f"{number}); a class is in one")
            if name not in seen:  # a line repeated changes nothing
                seen[name] = split, number
                splits[split].append(name)
    empty = [split for split, names in splits.items() if not names]
    if empty:
        raise UserError(f"dataset.split_file {path} puts no class in the {empty[0]} split; each "
                        f"of {', '.join(SPLITS)} needs classes")
    left_out = [name for name in classes if name not in seen]
    if left_out:
        log.warning("dataset.split_file names no split for %d %s, left out: %s",
                    len(left_out), kind, listed(left_out))
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


def check_settings(image_size: int | str, channels: int | str, augment: object) -> None:
    if image_size != AUTO and (isinstance(image_size, bool) or not isinstance(image_size, int)
                               or image_size < 1):
        raise UserError(f"dataset.image_size={image_size!r} must be a whole number of pixels "
                        ">= 1, or auto (chosen from the images' sizes)")
    if channels not in (1, 3, AUTO) or isinstance(channels, bool):
        raise UserError(f"dataset.channels={channels!r} must be 1 (grey) or 3 (RGB), or auto "
                        "(1 when every image is grey)")
    if not (augment is None or augment == AUTO or callable(augment)):
        raise UserError(f"dataset.augment={augment!r} must be auto (chosen from the images), "
                        "null (none) or an augmentation, e.g. +dataset/augment=natural")


def auto_image_size(median_side: int) -> int:
    low, high = AUTO_SIZES
    return min(max(round(median_side / AUTO_SIZE_DIVISOR), low), high)


def inferred_settings(survey: ImageSurvey, image_size: int | str, channels: int | str,
                      augment: Augment | str | None,
                      root: Path) -> tuple[int, int, Augment | None]:
    """The settings left auto, chosen from what the images are; said in one line of the log."""
    grey = survey.colour_image is None
    said = []
    if channels == AUTO:
        channels = 1 if grey else 3
        why = ("every image is grey" if grey else
               f"{Path(survey.colour_image).relative_to(root)} is in colour")
        said.append(f"{why} -> channels={channels}")
    if image_size == AUTO:
        image_size = auto_image_size(survey.median_side)
        said.append(f"median shorter side {survey.median_side} px -> image_size={image_size} "
                    f"(1/{AUTO_SIZE_DIVISOR} of it, within {AUTO_SIZES[0]}-{AUTO_SIZES[1]} px)")
    if augment == AUTO:
        augment = None if grey else Augment()
        said.append("grey images -> augment=null (+dataset/augment=natural adds it)" if grey
                    else "colour images -> the natural-image augmentation (dataset.augment=null "
                         "turns it off)")
    log.info("image folder: %s", "; ".join(said))
    return image_size, channels, augment


class ImageFolder(ClassificationTaskFamily):
    """Args:
        root: the folder of class folders (or of train/, val/, test/ folders of class folders).
        data_dir: where the cache goes (`<data_dir>/image_folder/<root's name and a hash>/`).
        image_size: images are resized to image_size x image_size; auto: chosen from their sizes.
        channels: 1 (grey) or 3 (RGB); auto: 1 when every image is grey, else 3.
        split_file: a CSV of class,split lines, or null.
        split_fractions: train, val and test shares of the classes, when neither train/val/test
            folders nor a split file say.
        split_seed: seeds the shuffle of the classes before they are cut by split_fractions.
        min_examples: leave out (with a warning listing them) the classes with fewer images; null
            keeps every class, and a task shape larger than the smallest class is an error.
        normalize: per-channel [mean, std] applied to the pixels in [0, 1], or null.
        augment: the augmentation of meta-training episodes (dataset.augment), null, or auto:
            none for grey images, the natural-image augmentation for colour ones.
    """

    drops_small_classes = True

    def __init__(self, root: str, data_dir: str, image_size: int | str = AUTO,
                 channels: int | str = AUTO, split_file: str | None = None,
                 split_fractions: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
                 min_examples: int | None = None,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                 augment: Augment | str | None = AUTO):
        check_settings(image_size, channels, augment)
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise UserError(f"dataset.root={root!r}: no such folder")
        images = read_layout(root_path, split_file, split_fractions, split_seed)
        images = {split: self.drop_small(classes, min_examples, split)
                  for split, classes in images.items()}
        files = [path for classes in images.values() for paths in classes.values()
                 for path in paths]
        key = hashlib.sha1(str(root_path.resolve()).encode()).hexdigest()[:10]
        folder = Path(data_dir) / "image_folder" / f"{root_path.name}_{key}"
        fingerprint = files_fingerprint(files, root_path) + hashlib.sha1(
            repr({split: list(classes) for split, classes in images.items()}).encode()).hexdigest()
        if AUTO in (image_size, channels) or augment == AUTO:
            survey = image_survey(folder / "survey.json", fingerprint, lambda: files)
            image_size, channels, augment = inferred_settings(survey, image_size, channels,
                                                              augment, root_path)
        cache = folder / f"{image_size}px_{channels}ch"  # one per size: switching rebuilds nothing
        splits = image_cache(cache, fingerprint, images.__getitem__, image_size, channels)
        super().__init__(splits, normalize, augment)

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
