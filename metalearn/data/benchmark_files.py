"""What the five few-shot image benchmarks share (mini_imagenet.py, tiered_imagenet.py,
cifar_fs.py, fc100.py, cub.py): the check of their settings, where their image caches go, looking
for a published file or archive in `root` and downloading it when allowed (written whole through
atomic_write; archives unpacked in place), reading pickles, and the reader of CIFAR-100's python
pickles that CIFAR-FS and FC100 are both cut from.

A file that is missing is a one-line UserError naming the file, the folder looked in and where
to get it (and, when a download was tried, that it failed and why); a file that is there but not
in the published format is a one-line UserError naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from metalearn.data.episodes import ClassExamples
from metalearn.data.image_cache import SplitSources, files_fingerprint, image_cache
from metalearn.errors import UserError
from metalearn.files import atomic_write

#: split -> class name -> the class's images
Sources = Mapping[str, SplitSources]

log = logging.getLogger(__name__)

#: learn2learn's copies of the benchmarks' published files
ZENODO = "https://zenodo.org/record/7978538/files"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_SIZE = 32


def check_settings(image_size: Any, channels: Any, normalize: Any) -> None:
    """image_size, channels and normalize as the benchmarks take them, or a UserError."""
    if channels not in (1, 3) or isinstance(channels, bool):
        raise UserError(f"dataset.channels={channels!r} must be 1 (grey) or 3 (RGB)")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"dataset.image_size={image_size!r} must be a positive number of pixels")
    if normalize is None:
        return
    try:
        means, stds = ([float(value) for value in part] for part in normalize)
    except (TypeError, ValueError):
        means = stds = []
    if len(means) != channels or len(stds) != channels or min(stds) <= 0:
        raise UserError(f"dataset.normalize={normalize} must be [[means], [stds]], {channels} numbers "
                        "each (one per channel, stds > 0), or null")


def cache_folder(data_dir: str, name: str, image_size: int, channels: int) -> Path:
    """Where a benchmark's decoded images are cached: <data_dir>/<name>/cache/<S>px_<C>ch/ (one
    folder per image size and channels, so switching between sizes rebuilds nothing)."""
    return Path(data_dir).expanduser() / name / "cache" / f"{image_size}px_{channels}ch"


def fingerprint(files: Iterable[Path], root: Path, *details: object) -> str:
    """The files' names, sizes and times (relative to root), and whatever else decides the cached
    images and classes (the layout read, a split written in code)."""
    details_digest = hashlib.sha1(repr(details).encode()).hexdigest()[:16]
    return f"{files_fingerprint(files, root)}|{details_digest}"


def cached_splits(data_dir: str, name: str, image_size: int, channels: int,
                  files: Iterable[Path], root: Path, sources: Callable[[], Sources],
                  *details: object) -> dict[str, ClassExamples]:
    """The splits' images from the benchmark's cache (cache_folder), built from `sources()` (read
    once, when the cache is built) when it is missing or was made from other files (fingerprint
    of files and details)."""
    everything = functools.cache(sources)
    return image_cache(cache_folder(data_dir, name, image_size, channels),
                       fingerprint(files, root, *details), lambda split: everything()[split],
                       image_size, channels)


def missing(dataset: str, name: str, folder: Path | str, url: str, offer_download: bool = False,
            error: BaseException | None = None, note: str = "") -> UserError:
    """The one-line error for a published file that is not there: which, where it was looked for,
    where to get it, and (error) that downloading it was tried and failed."""
    message = f"{dataset}: no {name} in {folder}"
    if error is not None:
        message += (f"; downloading {url} failed ({str(error).strip() or type(error).__name__}),"
                    " download it there yourself")
    else:
        message += f"; get it from {url}"
        if offer_download:
            message += ", or set dataset.download=true to download it"
    return UserError(message + (f" ({note})" if note else ""))


def url_name(url: str) -> str:
    """The file name at the end of a URL (query left out)."""
    return Path(urllib.parse.urlparse(url).path).name


def fetch(url: str, target: Path) -> None:
    """Downloads url into target, whole or not at all (raises OSError when it fails)."""
    log.info("Downloading %s to %s", url, target)
    with atomic_write(target) as partial, tqdm(desc=f"Downloading {target.name}", unit="B",
                                               unit_scale=True, disable=None) as progress:
        def report(blocks: int, block_size: int, total: int) -> None:
            progress.total = total if total > 0 else None
            progress.update(blocks * block_size - progress.n)

        urllib.request.urlretrieve(url, partial, reporthook=report)


def find_file(dataset: str, folder: Path, names: Sequence[str], url: str, download: bool,
              note: str = "") -> Path:
    """folder/<name> for the first of `names` that is there; else, when download, the file at
    `url` downloaded into folder (under the URL's file name, which should be one of `names`)."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    shown = " or ".join(names)
    if not download:
        raise missing(dataset, shown, folder, url, offer_download=True, note=note)
    target = folder / url_name(url)
    try:
        fetch(url, target)
    except OSError as error:
        raise missing(dataset, shown, folder, url, error=error, note=note) from None
    return target


def find_unpacked(dataset: str, folder: Path, wanted: str, url: str, download: bool,
                  what: str = "", note: str = "") -> Path:
    """folder/wanted, a file or folder that the archive at `url` (a .zip, .tar.gz or .tgz) holds:
    unpacked from the archive when the archive lies in folder, else downloaded (when download)
    and unpacked there. `what`: how the error for a missing file names it."""
    path, archive = folder / wanted, folder / url_name(url)
    if path.exists():
        return path
    what = what or f"{wanted} (nor {archive.name})"
    downloaded = False
    if not archive.is_file():
        if not download:
            raise missing(dataset, what, folder, url, offer_download=True, note=note)
        try:
            fetch(url, archive)
        except OSError as error:
            raise missing(dataset, what, folder, url, error=error, note=note) from None
        downloaded = True
    unpack(dataset, archive, folder)
    if not path.exists():
        raise UserError(f"{dataset}: {archive} holds no {wanted}; expected the archive from {url}")
    if downloaded:
        archive.unlink()
    return path


def unpack(dataset: str, archive: Path, folder: Path) -> None:
    """Unpacks a zip or tar archive into folder: into a scratch folder first, then each of its
    top-level entries moved into place in one step, so an interrupted unpacking leaves no
    half-filled folder where a whole one is expected."""
    log.info("Unpacking %s into %s", archive, folder)
    scratch = folder / f".{archive.name}.{os.getpid()}.unpacking"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as opened:
                opened.extractall(scratch)
        else:
            with tarfile.open(archive) as opened:
                opened.extractall(scratch, filter="data")
        for entry in scratch.iterdir():
            if not (folder / entry.name).exists():
                os.replace(entry, folder / entry.name)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as error:
        raise UserError(f"{dataset}: cannot unpack {archive} ({error}); delete it and download it "
                        "again") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_pickle(dataset: str, path: Path, encoding: str = "latin1") -> Any:
    """A pickle's contents (latin1: numpy arrays and str of pickles written by Python 2 load
    too); a file that does not unpickle is a UserError naming it. Pickles run code when loaded:
    read only the published files."""
    try:
        with path.open("rb") as file:
            return pickle.load(file, encoding=encoding)
    except Exception as error:  # any failure to unpickle (truncated, not a pickle, ...)
        raise UserError(f"{dataset}: {path} is not a readable pickle ({type(error).__name__}: "
                        f"{str(error).strip()[:200]}); replace it with the published file") from None


def text(value: Any) -> Any:
    """bytes (a Python 2 str, or a key of CIFAR's pickles) as str; anything else as it is."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def str_keys(value: Any) -> Any:
    """A dict with bytes keys as one with str keys (CIFAR-100's b'data' -> 'data')."""
    return {text(key): item for key, item in value.items()} if isinstance(value, dict) else value


def check_disjoint(dataset: str, splits: Mapping[str, Sequence[str]],
                   files: Mapping[str, Path | str]) -> None:
    """Every split holds a class, and no class is in two splits; files: where each split's classes
    are listed, for the error."""
    seen: dict[str, str] = {}
    for split, names in splits.items():
        if not names:
            raise UserError(f"{dataset}: {files[split]} lists no class of the {split} split")
        for name in names:
            if name in seen:
                raise UserError(f"{dataset}: {files[split]} lists class {name!r} of the {split} "
                                f"split, which {files[seen[name]]} lists in the {seen[name]} split")
            seen[name] = split


class Cifar100(NamedTuple):
    """CIFAR-100's 60,000 images, the train file's then the test file's (600 of each class)."""

    images: np.ndarray         # uint8 [N, 32, 32, 3]
    fine_labels: np.ndarray    # [N], 0..99
    coarse_labels: np.ndarray  # [N], the superclasses, 0..19
    fine_names: list[str]      # fine label -> name
    files: list[Path]          # train, test, meta


def cifar100_files(dataset: str, root: Path, download: bool, note: str = "") -> list[Path]:
    """root/cifar-100-python/{train,test,meta}: unpacked from cifar-100-python.tar.gz when that
    lies in root, else downloaded from CIFAR100_URL when download."""
    folder = find_unpacked(dataset, root, CIFAR100_FOLDER, CIFAR100_URL, download,
                           what=f"{CIFAR100_FOLDER}/ (nor {url_name(CIFAR100_URL)})", note=note)
    files = [folder / name for name in ("train", "test", "meta")]
    for path in files:
        if not path.is_file():
            raise missing(dataset, path.name, folder, CIFAR100_URL, note=note)
    return files


def read_cifar100(dataset: str, files: Sequence[Path]) -> Cifar100:
    """CIFAR-100's python pickles (train, test, meta): dicts with b'data' [N, 3072] uint8 (the
    red, green and blue planes, each 32 x 32 row-major), b'fine_labels', b'coarse_labels', and
    b'fine_label_names' in meta."""
    images, fine, coarse = [], [], []
    for path in files[:2]:
        part = str_keys(read_pickle(dataset, path))
        data = part.get("data") if isinstance(part, dict) else None
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3 * CIFAR100_SIZE ** 2
                and len(part.get("fine_labels", ())) == len(data)
                and len(part.get("coarse_labels", ())) == len(data)):
            raise UserError(f"{dataset}: {path} is not a CIFAR-100 python pickle (expected a dict "
                            "with b'data', uint8 [N, 3072], and N b'fine_labels' and "
                            "b'coarse_labels')")
        images.append(data.reshape(-1, 3, CIFAR100_SIZE, CIFAR100_SIZE).transpose(0, 2, 3, 1))
        fine.append(np.asarray(part["fine_labels"], dtype=np.int64))
        coarse.append(np.asarray(part["coarse_labels"], dtype=np.int64))
    meta = str_keys(read_pickle(dataset, files[2]))
    names = meta.get("fine_label_names") if isinstance(meta, dict) else None
    fine_labels = np.concatenate(fine)
    if not isinstance(names, (list, tuple)) or fine_labels.min() < 0 \
            or fine_labels.max() >= len(names):
        raise UserError(f"{dataset}: {files[2]} is not CIFAR-100's meta pickle (expected a dict "
                        "with b'fine_label_names', a name for each fine label)")
    return Cifar100(np.ascontiguousarray(np.concatenate(images)), fine_labels,
                    np.concatenate(coarse), [text(name) for name in names], list(files))


def class_rows(labels: np.ndarray) -> dict[int, np.ndarray]:
    """label -> the rows holding it, in row order, labels in increasing order."""
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    return {int(value): rows for value, rows in zip(values, np.split(order, starts[1:]))}
