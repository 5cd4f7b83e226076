"""The image cache every image dataset trains from: decoded once, then memory-mapped.

A dataset lists its images class by class, one split at a time (files, encoded bytes, or decoded
pixels), and says what they are made from (`fingerprint`: its files' names, sizes and times, and
the settings that change the pixels). The first run decodes them, resized to `image_size` x
`image_size` with `channels` channels, in parallel over the cores with a progress bar, into a
uint8 array [N, C, S, S] per split in a .npy file; later runs map those files into memory in about
a second, so a dataset larger than memory trains (pages are read as episodes need them), and only
one split's sources are held while building.

The cache is a folder of train.npy, val.npy, test.npy, then index.json (the classes' names and
offsets, and the fingerprint), written last and whole. A cache without an index (an interrupted
build), with another fingerprint (files added, removed or changed, other settings) or with
arrays of another size is rebuilt.

A dataset that chooses its settings from its images (the image folder's `auto` settings) asks
first for a survey (`image_survey`): every image's width and height (read from its header) and
whether every image is grey (from its mode, or for images that may hold colour from their
pixels, until the first colour image). It is recorded beside the caches with the same kind of
fingerprint, so a later run chooses the same without opening an image.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from metalearn.data.episodes import ClassExamples
from metalearn.data.task_family import SPLITS
from metalearn.errors import UserError
from metalearn.files import atomic_write, write_text

log = logging.getLogger(__name__)

#: an image: a file, its encoded bytes (PNG, JPEG, ...; also as a 1-D uint8 array), or decoded
#: uint8 pixels [H, W(, C)]
ImageSource = str | os.PathLike | bytes | np.ndarray
#: class name -> the class's images, of one split
SplitSources = Mapping[str, Sequence[ImageSource]]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")
#: 2: 16- and 32-bit images scaled by their range (version 1 clipped them to white);
#: 3: fingerprints hold the files' change times too
CACHE_VERSION = 3
CHUNK = 256  # images per worker task
#: what Pillow raises for a file it cannot read as an image
UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)
#: Pillow modes that hold no colour, whose pixels need no look
GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
#: an image in a colour mode is grey when no pixel's channels differ by more than this many
#: levels of 255: a grey scan saved by a colour scanner or through JPEG is rarely exact
GREY_SPREAD = 8


def files_fingerprint(files: Iterable[Path], root: Path) -> str:
    """A digest of files' paths (relative to root), sizes, modification and change times: changes
    when a file is added, removed or rewritten, also by one of the same size whose modification
    time was set back (copied with its times kept), which changes its change time."""
    digest = hashlib.sha1()
    for path in sorted(files):
        try:
            stat = path.stat()
        except OSError as error:
            raise UserError(f"cannot read {path} ({error.strerror}); it was listed a moment "
                            "ago") from None
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
                      f"{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()


def eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit (integer or float) grey image scaled from its own range of values to
    0-255 (Pillow's convert clips such values at 255, so a 16-bit scan became white); other
    images as they are."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    low, high = values.min(), values.max()
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


def open_image(source: ImageSource) -> Image.Image:
    """The image of a source, opened (Pillow reads the pixels when they are asked for)."""
    if isinstance(source, np.ndarray) and source.ndim == 1:  # encoded bytes in an array
        source = source.tobytes()
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def unreadable(source: ImageSource, error: Exception) -> UserError:
    name = source if isinstance(source, (str, os.PathLike)) else "an image"
    return UserError(f"cannot read {name}: {error}")


def decode(source: ImageSource, image_size: int, channels: int) -> np.ndarray:
    """One image as uint8 [channels, image_size, image_size]: grey or RGB, resized (bilinear,
    antialiased) when its size differs."""
    try:
        image = eight_bit(open_image(source)).convert("L" if channels == 1 else "RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    except UNREADABLE as error:
        raise unreadable(source, error) from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


class ImageFacts(NamedTuple):
    """What a survey learns of one image: its size, and whether it is grey (None: not looked)."""

    width: int
    height: int
    grey: bool | None


def image_facts(source: ImageSource, look: bool) -> ImageFacts:
    """The size of an image (from its header) and whether it is grey: from its mode, or for a
    mode that may hold colour, from its pixels where `look` (every pixel's channels within
    GREY_SPREAD levels of each other)."""
    try:
        image = open_image(source)
        grey = image.mode in GREY_MODES or None
        if grey is None and look:
            pixels = np.asarray(image.convert("RGB"))
            grey = bool((pixels.max(axis=2) - pixels.min(axis=2)).max() <= GREY_SPREAD)
    except UNREADABLE as error:
        raise unreadable(source, error) from None
    return ImageFacts(*image.size, grey)


def survey_chunk(sources: Sequence[ImageSource], look: bool) -> list[ImageFacts]:
    """The facts of consecutive images (in a worker), looking at pixels until one is in
    colour: after that, whether the others are grey changes nothing."""
    facts = []
    for source in sources:
        facts.append(image_facts(source, look))
        look = look and facts[-1].grey is not False
    return facts


def decode_chunk(array_path: str, start: int, sources: Sequence[ImageSource], image_size: int,
                 channels: int) -> int:
    """Decodes images into rows start, start + 1, ... of the array being built (in a worker)."""
    array = np.load(array_path, mmap_mode="r+")
    for offset, source in enumerate(sources):
        array[start + offset] = decode(source, image_size, channels)
    array.flush()
    return len(sources)


def chunks(items: Sequence[ImageSource], size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def decoded_already(sources: Sequence[ImageSource], image_size: int) -> bool:
    """Whether the images are decoded pixels of the cache's size (copying them is no work for a
    pool of processes)."""
    first = sources[0]
    return isinstance(first, np.ndarray) and first.ndim > 1 and first.shape[:2] == (
        image_size, image_size)


def build_split(path: Path, sources: SplitSources, image_size: int, channels: int,
                workers: int) -> dict[str, Any]:
    """Decodes one split's images into the array at `path`; returns its part of the index."""
    flat = [image for images in sources.values() for image in images]
    counts = [len(images) for images in sources.values()]
    if not flat:
        raise UserError(f"{path.stem} split has no images")
    with atomic_write(path) as partial:
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                          shape=(len(flat), channels, image_size, image_size))
        del array  # the workers open it themselves
        with tqdm(total=len(flat), desc=f"Decoding {len(flat):,} {path.stem} images into "
                                        f"{path.parent}", unit="img", disable=None) as progress:
            if workers > 1 and len(flat) > CHUNK and not decoded_already(flat, image_size):
                with ProcessPoolExecutor(workers) as pool:
                    jobs = [pool.submit(decode_chunk, str(partial), start, part, image_size,
                                        channels) for start, part in chunks(flat, CHUNK)]
                    for job in jobs:
                        progress.update(job.result())
            else:
                for start, part in chunks(flat, CHUNK):
                    progress.update(decode_chunk(str(partial), start, part, image_size, channels))
    return {"names": list(sources), "offsets": np.concatenate([[0], np.cumsum(counts)]).tolist()}


class ImageSurvey(NamedTuple):
    """What a dataset's images are, for choosing its settings: how many, the median of their
    shorter sides in pixels, and the first image found in colour (None: every image is grey)."""

    images: int
    median_side: int
    colour_image: str | None


def survey_images(sources: Sequence[ImageSource], workers: int) -> ImageSurvey:
    """Reads every image's size, and looks at pixels until an image is in colour, in parallel
    over `workers` processes with at most 2 * workers chunks in flight (a chunk sent after a
    colour image was found looks at no pixels)."""
    facts: list[ImageFacts] = []
    colour_seen = False
    with tqdm(total=len(sources), desc=f"Surveying {len(sources):,} images", unit="img",
              disable=None) as progress:
        def learn(part: list[ImageFacts]) -> None:
            nonlocal colour_seen
            facts.extend(part)
            colour_seen = colour_seen or any(fact.grey is False for fact in part)
            progress.update(len(part))

        if workers > 1 and len(sources) > CHUNK:
            with ProcessPoolExecutor(workers) as pool:
                pending: deque = deque()
                for _, part in chunks(sources, CHUNK):
                    if len(pending) >= 2 * workers:
                        learn(pending.popleft().result())
                    pending.append(pool.submit(survey_chunk, part, not colour_seen))
                while pending:
                    learn(pending.popleft().result())
        else:
            for _, part in chunks(sources, CHUNK):
                learn(survey_chunk(part, not colour_seen))
    colour = next((str(source) for source, fact in zip(sources, facts) if fact.grey is False),
                  None)
    sides = [min(fact.width, fact.height) for fact in facts]
    return ImageSurvey(len(facts), int(np.median(sides)), colour)


def image_survey(path: Path, fingerprint: str, sources: Callable[[], Sequence[ImageSource]],
                 workers: int | None = None) -> ImageSurvey:
    """The survey recorded at `path` (a JSON file) when it was made from the same images
    (`fingerprint`), else a new survey of `sources()`, recorded there."""
    try:
        record = json.loads(path.read_text())
        if record.get("version") == CACHE_VERSION and record.get("fingerprint") == fingerprint:
            return ImageSurvey(**record["survey"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or damaged: surveyed again
    survey = survey_images(sources(), workers or os.cpu_count() or 1)
    write_text(path, json.dumps({"version": CACHE_VERSION, "fingerprint": fingerprint,
                                 "survey": survey._asdict()}))
    return survey


def open_cache(folder: Path, fingerprint: str, image_size: int,
               channels: int) -> dict[str, ClassExamples] | None:
    """The cached splits if the cache is whole and made from the same files and settings."""
    try:
        index = json.loads((folder / "index.json").read_text())
        if index.get("version") != CACHE_VERSION or index.get("fingerprint") != fingerprint:
            return None
        arrays = {split: np.load(folder / f"{split}.npy", mmap_mode="r")
                  for split in index["splits"]}
    except (OSError, ValueError, KeyError):
        return None
    splits = {}
    for split, part in index["splits"].items():
        array = arrays[split]
        if (array.shape != (part["offsets"][-1], channels, image_size, image_size)
                or array.dtype != np.uint8):
            return None
        splits[split] = ClassExamples(array, torch.tensor(part["offsets"]), tuple(part["names"]))
    return splits


def image_cache(folder: Path, fingerprint: str, sources: Callable[[str], SplitSources],
                image_size: int, channels: int,
                workers: int | None = None) -> dict[str, ClassExamples]:
    """The splits' images from the cache in `folder`, built from `sources(split)` (for split in
    train, val, test) when the cache is missing, interrupted or made from other files or
    settings."""
    fingerprint = f"{fingerprint}|{image_size}px|{channels}ch"
    splits = open_cache(folder, fingerprint, image_size, channels)
    if splits is not None:
        return splits
    if (folder / "index.json").exists():
        log.warning("the image cache %s is out of date; rebuilding it", folder)
        (folder / "index.json").unlink()  # never trusted again while the arrays are rebuilt
    folder.mkdir(parents=True, exist_ok=True)
    index = {"version": CACHE_VERSION, "fingerprint": fingerprint, "splits": {}}
    for split in SPLITS:
        index["splits"][split] = build_split(folder / f"{split}.npy", sources(split),
                                             image_size, channels,
                                             workers or os.cpu_count() or 1)
    write_text(folder / "index.json", json.dumps(index))
    splits = open_cache(folder, fingerprint, image_size, channels)
    assert splits is not None, folder
    return splits
