"""The one exception type for mistakes a user can fix (config, data files, command line), and the
checks of numbers that the config, the flags and the Python API share.

Entry points print a UserError as a single line and exit with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A bad config value, a missing or corrupt file, or a bad command-line argument."""


class NonFiniteError(UserError):
    """The meta-training loss or a meta-val or meta-test score became NaN or infinite: the run
    stops, with one line like a config mistake, since the fix is a setting (learning rates,
    clipping). Never a result."""


def check_whole_number(name: str, value: Any, minimum: int = 1) -> int:
    """`value` if it is a whole number >= minimum; otherwise a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name}={value!r} must be a whole number >= {minimum}")
    return value


def check_positive_number(name: str, value: Any) -> float:
    """`value` if it is a number > 0; otherwise a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{name}={value!r} must be a number > 0")
    return value
