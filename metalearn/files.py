"""Writing files whole or not at all: every file the project writes in one go (results, configs,
summaries, caches, checkpoints of the Python API, downloads) goes through `atomic_write`, so a
crash or a kill never leaves a half-written file where a complete one is expected, and a disk
that refuses the write (full, over quota, read-only) is one line naming the file."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metalearn.errors import WriteError

#: why a write fails that the user can fix, not the program: the disk is full, the quota spent,
#: the file system read-only, or the folder not theirs
REFUSED_WRITES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
# torch.save writes through its own C++ zip writer, which reports a failed write as a
# RuntimeError from that writer, without the system's error number
TORCH_WRITER_FAILURES = ("PytorchStreamWriter", "inline_container")


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write to. When the block ends without an error,
    the file is flushed to disk and replaces `path` in one step; otherwise it is removed and
    `path` is left as it was. A write the disk refuses is a WriteError naming `path`."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    except OSError as error:
        if isinstance(error, WriteError) or error.errno not in REFUSED_WRITES:
            raise  # a bug in what writes keeps its traceback
        raise WriteError(path, error.errno, error.strerror) from None
    except RuntimeError as error:
        if not any(writer in str(error) for writer in TORCH_WRITER_FAILURES):
            raise
        raise WriteError(path, errno.EIO, f"torch.save: {str(error).splitlines()[0]}") from None
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` into `path`, whole or not at all."""
    with atomic_write(path) as partial:
        partial.write_text(text)
