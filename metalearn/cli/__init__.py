"""How the entry points (train.py, eval.py, compare.py, meta_learning.py) start, run their job and
report mistakes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from metalearn.errors import UserError
from metalearn.run.allocator import tune_malloc
from metalearn.run.compose import moved_key_overrides
from metalearn.run.run_dir import in_multirun, record_job_error


def start_hydra_app() -> None:
    """What a Hydra entry point does before Hydra reads its command line: moved keys renamed,
    with a warning (metalearn/run/compose.py)."""
    sys.argv = moved_key_overrides(sys.argv)


def run_cli(function: Callable[..., Any], *args) -> Any:
    """Runs an entry point's function. A user's mistake becomes one line on stderr and exit status
    2; anything else is a bug and keeps its traceback. In a multirun, a job's mistake ends only
    that job: it is recorded for the sweep summary (which then ends the sweep with status 2), and
    the job returns None to the sweeper."""
    # malloc tuned before the job builds anything (metalearn/run/allocator.py says why), here,
    # where every entry point's job starts, also in a launcher's worker processes (joblib)
    logging.getLogger(__name__).debug(tune_malloc())
    try:
        return function(*args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        if not in_multirun():
            sys.exit(2)
        record_job_error(str(error))
        return None
