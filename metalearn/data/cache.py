"""Dataset caches: built once from the original files, written whole, read in about a second by
later runs, and rebuilt (with one warning line) when damaged or written by another version."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from metalearn.files import atomic_write

log = logging.getLogger(__name__)
T = TypeVar("T")


def cached(path: Path, build: Callable[[], T], check: Callable[[object], T]) -> T:
    """The cache at `path` if it loads and `check` accepts it (returning what to use, raising
    ValueError otherwise); else `build()`, saved to `path` first."""
    if path.is_file():
        try:
            return check(torch.load(path, weights_only=False))
        except Exception as error:  # a truncated file, another version's, or not a cache at all
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.warning("cache %s is damaged (%s); rebuilding it", path, reason)
    data = build()
    with atomic_write(path) as partial:
        torch.save(data, partial)
    return data
