"""Writing files whole or not at all: every file the project writes in one go (results, configs,
summaries, caches, checkpoints of the Python API, downloads) goes through `atomic_write`, so a
crash or a kill never leaves a half-written file where a complete one is expected."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write to. When the block ends without an error,
    the file is flushed to disk and replaces `path` in one step; otherwise it is removed and
    `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield partial
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` into `path`, whole or not at all."""
    with atomic_write(path) as partial:
        partial.write_text(text)
