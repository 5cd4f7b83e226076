"""Omniglot (Lake et al. 2015): 1,623 handwritten characters from 50 alphabets, 20 drawings each.

The two upstream archives are read once into a uint8 tensor cache
(`<data_dir>/omniglot/omniglot_<size>px.pt`, ink bright on a dark background); later runs load
the cache in about a second. Archives are looked for in `archive_dir` (config key
`dataset.archive_dir`, or the environment variable METALEARN_OMNIGLOT_ARCHIVES), then in
`<data_dir>/omniglot/`, and are otherwise downloaded there from upstream. Only the structure is
checked (alphabets, characters, 20 drawings each), not checksums, so rebuilt archives work.

Splits (`split`):
- "lake": meta-train and meta-val from the 30 background alphabets (a fixed set of
  LAKE_VAL_ALPHABETS alphabets is held out for meta-val), meta-test is the 20 evaluation alphabets.
- "vinyals": all 1,623 characters shuffled with a fixed seed into 1,100 / 100 / 423.
With `rotations=True` every character also appears rotated by 90, 180 and 270 degrees, each
rotation a class of its own in the same split as its character.
"""

from __future__ import annotations

import io
import logging
import os
import urllib.request
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metalearn.data.augment import Augment
from metalearn.data.cache import cached
from metalearn.data.episodes import ClassExamples
from metalearn.data.task_family import ClassificationTaskFamily
from metalearn.errors import UserError
from metalearn.files import atomic_write

log = logging.getLogger(__name__)

ARCHIVE_ENV = "METALEARN_OMNIGLOT_ARCHIVES"
UPSTREAM_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip"
# archive name -> (alphabets, characters)
ARCHIVES = {"images_background": (30, 964), "images_evaluation": (20, 659)}
DRAWINGS_PER_CHARACTER = 20
SPLIT_NAMES = ("lake", "vinyals")
VINYALS_SIZES = (1100, 100, 423)
LAKE_VAL_ALPHABETS = 5
SPLIT_SEED = 0  # fixed forever: changing it would change every published number


def find_archive(name: str, archive_dir: str | None, download_dir: Path, download: bool) -> Path:
    """Path of `<name>.zip`: from archive_dir, else download_dir, else downloaded into download_dir."""
    candidates = [Path(d) / f"{name}.zip" for d in (archive_dir, download_dir) if d]
    for path in candidates:
        if path.is_file():
            return path
    url = UPSTREAM_URL.format(name=name)
    searched = ", ".join(str(p) for p in candidates)
    if not download:
        raise UserError(
            f"Omniglot archive {name}.zip not found (looked at {searched}). Put the upstream "
            f"archive there, set dataset.archive_dir or {ARCHIVE_ENV}, or allow "
            f"dataset.download=true to fetch {url}"
        )
    target = download_dir / f"{name}.zip"
    log.info("Downloading %s to %s", url, target)
    try:
        with atomic_write(target) as partial:
            urllib.request.urlretrieve(url, partial)
    except OSError as error:
        raise UserError(
            f"Omniglot archive {name}.zip not found (looked at {searched}) and downloading "
            f"{url} failed ({error}). Put the archive there or set dataset.archive_dir or "
            f"{ARCHIVE_ENV}"
        ) from None
    return target


def read_archive(path: Path, image_size: int) -> tuple[np.ndarray, list[str]]:
    """Reads one archive into uint8 [characters, 20, size, size] (ink = 255) and alphabet names.

    Characters are sorted by (alphabet, character folder), drawings by file name.
    """
    name = path.stem
    expected_alphabets, expected_characters = ARCHIVES[name]
    try:
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.namelist() if m.endswith(".png")]
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(
            f"Omniglot archive {path} is corrupt ({error}); delete it and provide a fresh copy"
        ) from None
    drawings: dict[tuple[str, str], list[str]] = {}
    for member in members:
        parts = member.split("/")
        if len(parts) != 4 or parts[0] != name:
            raise UserError(
                f"Omniglot archive {path} has an unexpected entry {member!r}; expected "
                f"{name}/<alphabet>/<character>/<drawing>.png"
            )
        drawings.setdefault((parts[1], parts[2]), []).append(member)
    alphabets = sorted({alphabet for alphabet, _ in drawings})
    counts = {len(files) for files in drawings.values()}
    if (
        len(alphabets) != expected_alphabets
        or len(drawings) != expected_characters
        or counts != {DRAWINGS_PER_CHARACTER}
    ):
        raise UserError(
            f"Omniglot archive {path} holds {len(alphabets)} alphabets, {len(drawings)} characters "
            f"and {sorted(counts)} drawings per character; expected {expected_alphabets}, "
            f"{expected_characters} and {DRAWINGS_PER_CHARACTER}. Replace it with the upstream "
            f"archive"
        )
    characters = sorted(drawings)
    images = np.empty((len(characters), DRAWINGS_PER_CHARACTER, image_size, image_size), np.uint8)
    try:
        for c, key in enumerate(characters):
            for d, member in enumerate(sorted(drawings[key])):
                image = Image.open(io.BytesIO(archive.read(member))).convert("L")
                image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
                images[c, d] = 255 - np.asarray(image)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise UserError(f"Omniglot archive {path} is corrupt ({error})") from None
    return images, [alphabet for alphabet, _ in characters]


def load_omniglot(
    data_dir: str, archive_dir: str | None, image_size: int, download: bool
) -> dict[str, torch.Tensor | list]:
    """All 1,623 characters as {"images": uint8 [1623, 20, S, S], "alphabets", "background"}.

    Built from the archives on first use and cached under data_dir.
    """
    root = Path(data_dir) / "omniglot"

    def build() -> dict[str, torch.Tensor | list]:
        arrays, alphabets, background = [], [], []
        for name in ARCHIVES:
            path = find_archive(name, archive_dir or os.environ.get(ARCHIVE_ENV), root, download)
            log.info("Preparing Omniglot from %s (once; cached in %s)", path, root)
            images, names = read_archive(path, image_size)
            arrays.append(images)
            alphabets += names
            background += [name == "images_background"] * len(names)
        return {"images": torch.from_numpy(np.concatenate(arrays)), "alphabets": alphabets,
                "background": torch.tensor(background)}

    return cached(root / f"omniglot_{image_size}px.pt", build,
                  partial(checked_cache, image_size=image_size))


def checked_cache(data: object, image_size: int) -> dict[str, torch.Tensor | list]:
    """The cache's contents if they are what load_omniglot writes, else a ValueError."""
    characters = sum(count for _, count in ARCHIVES.values())
    expected = (characters, DRAWINGS_PER_CHARACTER, image_size, image_size)
    if not (isinstance(data, dict) and isinstance(data.get("images"), torch.Tensor)
            and tuple(data["images"].shape) == expected and data["images"].dtype == torch.uint8
            and len(data.get("alphabets", ())) == characters
            and len(data.get("background", ())) == characters):
        raise ValueError(f"it does not hold uint8 images of shape {expected} with their alphabets")
    return data


def check_memory(image_size: int, rotations: bool) -> None:
    """Omniglot at `image_size` must fit in this machine's memory (the images, and their split
    copies), checked before anything is read."""
    characters = sum(count for _, count in ARCHIVES.values())
    needed = characters * DRAWINGS_PER_CHARACTER * image_size**2 * (5 if rotations else 2)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise UserError(f"dataset.image_size={image_size} needs about {needed / 2**30:,.0f} GiB of "
                        f"memory for Omniglot, more than this machine's {available / 2**30:.0f} GiB")


def split_classes(
    alphabets: list[str], background: torch.Tensor, split: str
) -> dict[str, torch.Tensor]:
    """Character indices of meta-train / meta-val / meta-test under the named protocol."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    if split == "vinyals":
        order = torch.randperm(len(alphabets), generator=generator)
        train, val, _ = VINYALS_SIZES
        return {"train": order[:train], "val": order[train : train + val],
                "test": order[train + val :]}
    if split == "lake":
        names = sorted({a for a, b in zip(alphabets, background.tolist()) if b})
        held_out = torch.randperm(len(names), generator=generator)[:LAKE_VAL_ALPHABETS]
        val_alphabets = {names[i] for i in held_out.tolist()}
        in_val = torch.tensor([a in val_alphabets for a in alphabets])
        return {
            "train": torch.nonzero(background & ~in_val).squeeze(1),
            "val": torch.nonzero(background & in_val).squeeze(1),
            "test": torch.nonzero(~background).squeeze(1),
        }
    raise ValueError(f"unknown Omniglot split {split!r}")


class Omniglot(ClassificationTaskFamily):
    """Omniglot few-shot classification tasks (see the module docstring for files and splits)."""

    def __init__(
        self,
        data_dir: str,
        archive_dir: str | None = None,
        split: str = "vinyals",
        rotations: bool = True,
        image_size: int = 28,
        download: bool = True,
        augment: Augment | None = None,
    ):
        if split not in SPLIT_NAMES:
            raise UserError(f"dataset.split={split!r} is not a known Omniglot split; use one of: "
                            f"{', '.join(SPLIT_NAMES)}")
        if image_size < 1:
            raise UserError(f"dataset.image_size={image_size} must be a positive number of pixels")
        check_memory(image_size, rotations)
        data = load_omniglot(data_dir, archive_dir, image_size, download)
        self.split = split
        self.class_ids = split_classes(data["alphabets"], data["background"], split)
        images = data["images"].unsqueeze(2)  # [1623, 20, 1, S, S]
        by_split = {}
        for name, ids in self.class_ids.items():
            split_images = images[ids]
            names = [f"{data['alphabets'][i]} #{i}" for i in ids.tolist()]
            if rotations:
                split_images = torch.cat(
                    [split_images.rot90(k, dims=(-2, -1)) for k in range(4)]
                )
                names = [f"{n} rotated {90 * k}" for k in range(4) for n in names]
            by_split[name] = ClassExamples.dense(split_images.contiguous(), names)
        super().__init__(by_split, augment=augment)
