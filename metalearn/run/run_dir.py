"""A run's directory belongs to one run: it is locked while the run lives, a directory that already
holds a run is refused unless the command resumes it or says `overwrite=true`, and it must be
writable before anything trains."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from metalearn.errors import UserError
from metalearn.files import write_text

LOCK_FILE = ".lock"
#: a multirun job's one-line error, for the sweep summary
ERROR_FILE = "error.txt"
#: what a run writes into its directory (Hydra's .hydra/ and train.log are the launch's own)
RUN_FILES = ("config.yaml", "config_tree.log", "results.json", "results.md", "error.txt",
             "checkpoints", "csv", "tensorboard", "wandb", "plots")


def lock(run_dir: Path) -> IO:
    """Takes the run directory's lock for the life of this process (the operating system
    releases it when the process ends, killed or not); another live run holding it is a
    UserError naming that run's process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        other = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(f"run directory {run_dir} is in use by another run (process {other}); "
                        "wait for it to end or choose another hydra.run.dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def holds_a_run(run_dir: Path) -> bool:
    """Whether an earlier run wrote into this directory."""
    return any((run_dir / name).exists() for name in RUN_FILES if name != "error.txt")


def claim(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuses a directory that holds another run, unless this run resumes it (then its files
    are kept) or `overwrite` (then they are removed first)."""
    if resuming or not holds_a_run(run_dir):
        return
    if not overwrite:
        raise UserError(f"run directory {run_dir} already holds a run; resume it with "
                        "ckpt_path=last, replace it with overwrite=true, or choose another "
                        "hydra.run.dir")
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_writable(*folders: Path) -> None:
    """Each folder exists or can be made, and takes a file: checked before training, so that
    no checkpoint is lost to a folder that cannot hold it."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise UserError(f"cannot write into {folder} ({error.strerror}); make it writable "
                            "or choose another hydra.run.dir") from None


def in_multirun() -> bool:
    """Whether Hydra runs this job as one of a multirun's (not a single run, the API or a test)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_job_error(message: str) -> None:
    """Writes a failed job's error into its directory, for the sweep summary."""
    write_text(Path(HydraConfig.get().runtime.output_dir) / ERROR_FILE, message + "\n")
