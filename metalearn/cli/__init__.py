"""How the entry points (train.py, eval.py, compare.py, meta_learning.py) start, run their job and
report mistakes.

A Hydra entry point checks its command line before Hydra runs it (`start_hydra_app`): a mistake
in the config is one line and exit status 2, and the checks that need neither torch nor Lightning
come first, so that those mistakes are reported fast; the job's module, which loads them, is
imported by the entry point's function afterwards.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the parser hydra.main reads its command line with (Hydra has no public one)
from hydra._internal.utils import get_args_parser

from metalearn.errors import UserError
from metalearn.run.allocator import tune_malloc
from metalearn.run.compose import (
    CHECKPOINT_APPS,
    checkpoint_overrides,
    command_line_configs,
    moved_key_overrides,
)
from metalearn.run.config_check import check_components, check_config
from metalearn.run.run_dir import in_multirun, record_job_error

# Hydra's flags that ask it for something other than a run (help, the config, completion) or
# change where configs are found: the command line is then left to Hydra
NOT_A_RUN = ("help", "hydra_help", "info", "shell_completion", "experimental_rerun", "cfg",
             "config_path", "config_dir")


def start_hydra_app(config_name: str) -> None:
    """What a Hydra entry point does before Hydra reads its command line: moved keys renamed,
    with a warning (metalearn/run/compose.py), eval.py's and compare.py's keys of the
    checkpoint's groups taken as theirs (`checkpoint_overrides`), then the command line checked
    (`check_command_line`); a mistake ends the process with one line and exit status 2."""
    sys.argv = [sys.argv[0], *checkpoint_overrides(config_name, moved_key_overrides(sys.argv[1:]))]
    run_cli(check_command_line, config_name, sys.argv[1:])


def check_command_line(config_name: str, argv: list[str]) -> None:
    """The config of every job of a Hydra command line, checked before Hydra starts any: it
    composes (unknown names and keys), its values are right, Hydra can make the run (or sweep)
    directory, and, for train.py, the components take their settings (eval.py and compare.py
    check those on the checkpoint's config, once it is loaded)."""
    args = get_args_parser().parse_args(argv)
    if any(getattr(args, flag) for flag in NOT_A_RUN):
        return
    name = args.config_name or config_name
    configs, output_dir = command_line_configs(args.overrides, name, args.multirun)
    for cfg in configs:
        check_config(cfg)
    check_creatable(output_dir, "hydra.sweep.dir" if args.multirun else "hydra.run.dir")
    if name not in CHECKPOINT_APPS:
        for cfg in configs:
            check_components(cfg)


def check_creatable(directory: Path, key: str) -> None:
    """Hydra can make `directory` (or it exists) and write into it: checked before Hydra makes
    it (which fails with a traceback), leaving nothing behind. `key` is the setting naming it."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write into {directory} ({existing} is a file); choose another "
                        f"{key}")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise UserError(f"cannot write into {directory} ({existing}: {error.strerror}); make it "
                        f"writable or choose another {key}") from None


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
