"""The one exception type for mistakes a user can fix (config, data files, command line), and the
checks of numbers that the config, the flags and the Python API share.

Entry points print a UserError as a single line and exit with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import math
from typing import Any


class UserError(Exception):
    """A bad config value, a missing or corrupt file, or a bad command-line argument."""


class WriteError(UserError, OSError):
    """A file that could not be written (a full disk, a quota, a read-only file system): one
    line naming the file. Also an OSError with the system's `errno` and `strerror`, for callers
    that say more about what was lost (a checkpoint's writer stops the run)."""

    def __init__(self, path: Any, errno: int, reason: str):
        OSError.__init__(self, errno, reason, str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename} ({self.strerror}); the file as it was is kept"


class NonFiniteError(UserError):
    """The meta-training loss or a meta-val or meta-test score became NaN or infinite: the run
    stops, with one line like a config mistake, since the fix is a setting (learning rates,
    clipping). Never a result."""


def check_whole_number(name: str, value: Any, minimum: int = 1) -> int:
    """`value` if it is a whole number >= minimum; otherwise a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name}={value!r} must be a whole number >= {minimum}")
    return value


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite_number(name: str, value: Any) -> float:
    """`value` if it is a finite number (not NaN, not infinite); otherwise a UserError naming
    `name`."""
    if not is_number(value) or not math.isfinite(value):
        raise UserError(f"{name}={value!r} must be a finite number")
    return value


def check_positive_number(name: str, value: Any) -> float:
    """`value` if it is a finite number > 0; otherwise a UserError naming `name`."""
    if is_number(value) and not math.isfinite(value):
        raise UserError(f"{name}={value!r} must be a finite number > 0")
    if not is_number(value) or value <= 0:
        raise UserError(f"{name}={value!r} must be a number > 0")
    return value
