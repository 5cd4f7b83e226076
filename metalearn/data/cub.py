"""CUB-200-2011 (Wah et al. 2011, "The Caltech-UCSD Birds-200-2011 Dataset"; as a few-shot
benchmark, Chen et al. 2019, "A Closer Look at Few-shot Classification"): 11,788 photographs of
200 bird species, of every size. The split is Chen et al.'s (CloserLookFewShot,
filelists/CUB/write_CUB_filelist.py): the 200 classes in class id order, class i (0-based) is
meta-train when i % 2 == 0 (100 classes), meta-val when i % 4 == 1 (50), meta-test when
i % 4 == 3 (50).

`root` is the dataset's folder CUB_200_2011 (or the folder holding it), with
- `images/`, the photographs (<class folder>/<name>.jpg);
- `images.txt`: `<image id> <path relative to images/>` lines;
- `image_class_labels.txt`: `<image id> <class id>` lines;
- `classes.txt`: `<class id> <class name>` lines (ids 1 to 200).
The archive CUB_200_2011.tgz (URL, 1.1 GB) is unpacked in root when it lies there, or downloaded
and unpacked there when download=true.

Images are decoded once, resized to image_size x image_size (84 by default, as in most few-shot
papers), into a memory-mapped cache, <data_dir>/cub/cache/<S>px_<C>ch/
(metalearn/data/image_cache.py), rebuilt when the files change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from metalearn.data.augment import Augment
from metalearn.data.benchmark_files import (
    cached_splits,
    check_settings,
    find_unpacked,
    missing,
)
from metalearn.data.task_family import ClassificationTaskFamily
from metalearn.errors import UserError

NAME = "CUB-200-2011"
PAGE = "https://data.caltech.edu/records/65de6-vp158"
URL = f"{PAGE}/files/CUB_200_2011.tgz?download=1"
FOLDER = "CUB_200_2011"
CLASSES = 200
LISTS = ("images.txt", "image_class_labels.txt", "classes.txt")


def split_of(index: int) -> str:
    """Chen et al.'s split of the class at this index of the class id order."""
    return "train" if index % 2 == 0 else "val" if index % 4 == 1 else "test"


def dataset_folder(root: Path, download: bool) -> Path:
    """root, or root/CUB_200_2011, whichever holds images.txt; else CUB_200_2011.tgz unpacked in
    root (downloaded when download)."""
    for folder in (root, root / FOLDER):
        if (folder / LISTS[0]).is_file():
            return folder
    return find_unpacked(NAME, root, FOLDER, URL, download,
                         what=f"{LISTS[0]} (nor {FOLDER}/{LISTS[0]}, nor {FOLDER}.tgz)",
                         note=f"1.1 GB; the record: {PAGE}")


def read_pairs(path: Path, value_is_id: bool) -> dict[int, str | int]:
    """`<id> <value>` lines -> id -> value (an int when value_is_id)."""
    if not path.is_file():
        raise missing(NAME, path.name, path.parent, URL)
    pairs: dict[int, str | int] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        try:
            key, value = int(parts[0]), parts[1].strip()
            pairs[key] = int(value) if value_is_id else value
        except (IndexError, ValueError):
            expected = "<id> <id>" if value_is_id else "<id> <text>"
            raise UserError(f"{NAME}: {path}, line {number}: expected {expected}; got "
                            f"{line.strip()!r}") from None
    return pairs


def read_dataset(folder: Path) -> tuple[list[Path], dict[str, dict[str, list[Path]]]]:
    """The files read, and split -> class -> image files (in image id order)."""
    images_txt, labels_txt, classes_txt = (folder / name for name in LISTS)
    paths, labels, classes = (read_pairs(images_txt, False), read_pairs(labels_txt, True),
                              read_pairs(classes_txt, False))
    if len(classes) != CLASSES:
        raise UserError(f"{NAME}: {classes_txt} lists {len(classes)} classes; CUB-200-2011 has "
                        f"{CLASSES} (Chen et al.'s split is of those)")
    by_class: dict[int, list[Path]] = {class_id: [] for class_id in classes}
    for image_id, relative in sorted(paths.items()):
        if image_id not in labels or labels[image_id] not in by_class:
            raise UserError(f"{NAME}: {labels_txt} gives image {image_id} of {images_txt} no "
                            f"class of {classes_txt}")
        path = folder / "images" / str(relative)
        if not path.is_file():
            raise UserError(f"{NAME}: {images_txt} lists image {relative}, which is not in "
                            f"{folder / 'images'}")
        by_class[labels[image_id]].append(path)
    splits: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}, "test": {}}
    for index, class_id in enumerate(sorted(classes)):
        if not by_class[class_id]:
            raise UserError(f"{NAME}: {labels_txt} gives class {class_id} ({classes[class_id]}) "
                            f"of {classes_txt} no image")
        splits[split_of(index)][str(classes[class_id])] = by_class[class_id]
    files = [images_txt, labels_txt, classes_txt] + [
        path for images in by_class.values() for path in images]
    return files, splits


class CUB(ClassificationTaskFamily):
    """CUB-200-2011 few-shot tasks (the module docstring has the split and the files).

    Args:
        root: the CUB_200_2011 folder, or the folder holding it (or CUB_200_2011.tgz).
        data_dir: where the cache goes (<data_dir>/cub/cache/<S>px_<C>ch/).
        image_size: images are resized to image_size x image_size.
        channels: 1 (grey) or 3 (RGB).
        normalize: per-channel [means, stds] applied to the pixels in [0, 1], or null.
        augment: the augmentation of meta-training episodes (dataset.augment), or null.
        download: download and unpack CUB_200_2011.tgz when it is not there.
    """

    def __init__(self, root: str, data_dir: str, image_size: int = 84, channels: int = 3,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = (
                     (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                 augment: Augment | None = None,
                 download: bool = True):
        check_settings(image_size, channels, normalize)
        folder = dataset_folder(Path(root).expanduser(), download)
        files, splits = read_dataset(folder)
        super().__init__(cached_splits(data_dir, "cub", image_size, channels, files, folder,
                                       splits.copy, "chen2019"), normalize, augment)
