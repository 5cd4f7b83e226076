"""A run's directory belongs to one run: it is locked while the run lives, a directory that already
holds a run is refused unless the command resumes it or says `overwrite=true`, and it must be
writable before anything trains.

Its records say how the run was made, and only an accepted run writes them: Hydra writes no
`.hydra/` at launch (configs/hydra/default.yaml); the run writes it (`write_launch_record`) and
`data_split.json` (metalearn/run/training.py) once its checks have passed, so a refused command
leaves an earlier run's records as they were.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from metalearn.errors import UserError
from metalearn.files import write_text

LOCK_FILE = ".lock"
#: a multirun job's one-line error, for the sweep summary
ERROR_FILE = "error.txt"
#: Hydra's record of a launch: the composed config, Hydra's own config, the overrides
LAUNCH_RECORD = ".hydra"
#: the data a run was made from: the dataset, its files and the classes of each split
DATA_RECORD = "data_split.json"
#: what a run writes into its directory (train.log, which every launch appends to, is kept)
RUN_FILES = ("config.yaml", "config_tree.log", "results.json", "results.md", ERROR_FILE,
             LAUNCH_RECORD, DATA_RECORD, "checkpoints", "csv", "tensorboard", "wandb", "plots")


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
    """Whether an earlier run left something of value here: a checkpoint or results. Records
    and logs of a run refused or stopped before its first checkpoint do not count."""
    return (run_dir / "results.json").is_file() or any((run_dir / "checkpoints").glob("*.ckpt"))


def claim(run_dir: Path, resuming: bool, overwrite: bool) -> bool:
    """Refuses a directory that holds another run, unless this run resumes it (its files are
    kept) or `overwrite`; returns whether the earlier run's files are to be removed, which the
    run does with `clear` once its own checks have passed."""
    if resuming or not holds_a_run(run_dir):
        return False
    if not overwrite:
        raise UserError(f"run directory {run_dir} already holds a run; resume it with "
                        "ckpt_path=last, replace it with overwrite=true, or choose another "
                        "hydra.run.dir")
    return True


def clear(run_dir: Path, earlier_run: bool) -> None:
    """Removes what an earlier launch left that would be taken for this run's: every file of the
    earlier run (`earlier_run`, with overwrite=true), else only a refused launch's error."""
    for name in RUN_FILES if earlier_run else (ERROR_FILE,):
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


def write_launch_record(run_dir: Path, task_cfg: DictConfig) -> None:
    """Writes what Hydra would have written at launch into run_dir/.hydra/, each file whole: the
    composed config (config.yaml), Hydra's (hydra.yaml) and the command line's overrides
    (overrides.yaml). Nothing outside a Hydra app (the Python API, tests)."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    folder = run_dir / LAUNCH_RECORD
    write_text(folder / "config.yaml", OmegaConf.to_yaml(task_cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))
