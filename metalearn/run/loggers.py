"""The run's loggers beyond Lightning's defaults: a CSV logger that keeps a resumed run's history,
Weights & Biases set up so that it never prompts for a login, the resolved config for every
logger, and the results and plots at the end of a run. Also the run's log file (train.log, from
Hydra's job logging): Lightning's lines and the error a run ends on go into it too."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import lightning.pytorch.loggers as lightning_loggers
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from matplotlib.image import imread

from metalearn.errors import UserError
from metalearn.evaluation.results import results_table
from metalearn.run.run_dir import in_multirun

WANDB_HOST = "https://api.wandb.ai"
#: the loggers that Lightning gives a console handler of their own when it is imported before
#: logging is set up (as train.py imports it before Hydra sets up the job's logging)
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")

log = logging.getLogger(__name__)


def route_lightning_logs() -> None:
    """Sends Lightning's log lines to the handlers logging is set up with (Hydra's console and
    train.log) instead of the console handlers Lightning added for itself, which kept them
    out of train.log. Nothing changes where logging has no handler yet (they would be lost)."""
    if not logging.getLogger().hasHandlers():
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's; not a file of the user's
                logger.removeHandler(handler)
        logger.propagate = True


def log_to_files(level: int, message: str, exc_info: bool = False) -> None:
    """Writes one log record to the log files alone (train.log): for what the entry point
    prints on the console itself, which would otherwise show twice."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None,
                            sys.exc_info() if exc_info else None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and level >= handler.level:
            handler.handle(record)


@contextmanager
def errors_in_log_files() -> Iterator[None]:
    """Puts the error that ends the block into the log files: a user's mistake as the one line
    the entry point prints, anything else (a bug) with its traceback."""
    try:
        yield
    except UserError as error:
        log_to_files(logging.ERROR, f"error: {error}")
        raise
    except Exception:
        log_to_files(logging.ERROR, "the run failed on an unexpected error:", exc_info=True)
        raise


class CSVLogger(lightning_loggers.CSVLogger):
    """Lightning's CSVLogger (metrics.csv), which keeps a resumed run's history.

    Lightning's deletes an existing metrics.csv when it starts. Checkpoints record how many rows
    were written when they were saved (`flush_csv`) and the row their step had yet to log; a run
    resumed from one calls `keep_rows` with those before anything is logged, and this logger then
    keeps exactly those rows and appends to them, dropping what the interrupted run logged after
    its checkpoint.
    """

    rows_kept: int | None = None
    pending_row: dict[str, float] | None = None

    def keep_rows(self, count: int, pending_row: dict[str, float] | None = None) -> None:
        self.rows_kept, self.pending_row = count, pending_row

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None and self.rows_kept is not None:
            path = Path(self.log_dir) / _ExperimentWriter.NAME_METRICS_FILE
            header, rows = [], []
            if path.is_file():
                with path.open(newline="") as file:
                    reader = csv.DictReader(file)
                    header, rows = list(reader.fieldnames or []), list(reader)[:self.rows_kept]
            writer = super().experiment  # deletes the file
            writer.metrics_keys, writer.metrics = header, rows
            if self.pending_row is not None:
                writer.metrics.append(self.pending_row)
            writer.save()
        return super().experiment


def flush_csv(loggers: Iterable[Logger]) -> int | None:
    """Writes out what the CSV logger holds and returns the rows of its metrics.csv (None without
    a CSV logger)."""
    for logger in loggers:
        if isinstance(logger, lightning_loggers.CSVLogger):
            logger.save()
            path = Path(logger.log_dir) / _ExperimentWriter.NAME_METRICS_FILE
            if not path.is_file():
                return 0
            with path.open(newline="") as file:
                return sum(1 for _ in csv.DictReader(file))
    return None


def has_netrc_key(environ: Mapping[str, str]) -> bool:
    """Whether the .netrc wandb reads ($NETRC, else ~/.netrc) holds an API key (the password)
    for the W&B host."""
    host = urlsplit(environ.get("WANDB_BASE_URL") or WANDB_HOST).netloc
    path = environ.get("NETRC") or Path(environ.get("HOME") or Path.home()) / ".netrc"
    try:
        login = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(login and login[2])


def wandb_offline(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether W&B must run offline: unless WANDB_MODE already chooses, offline exactly when no API
    key is configured (WANDB_API_KEY or a key in .netrc), so wandb never prompts for one."""
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"] in ("offline", "dryrun")
    return not (environ.get("WANDB_API_KEY") or has_netrc_key(environ))


def multirun_group() -> str | None:
    """The sweep directory's name when Hydra runs this job in a multirun (its jobs share it)."""
    if not in_multirun():
        return None
    return Path(HydraConfig.get().sweep.dir).name


def wandb_logger(save_dir: str, **kwargs) -> WandbLogger:
    """Lightning's WandbLogger writing under the run dir, the run named after that directory
    (<parent>/<name>) and grouped with the other jobs of its multirun; offline when no API key is
    configured."""
    run_dir = Path(save_dir)
    kwargs.setdefault("name", f"{run_dir.parent.name}/{run_dir.name}")
    kwargs.setdefault("group", multirun_group())
    return WandbLogger(save_dir=save_dir, offline=wandb_offline(), **kwargs)


def log_config(loggers: Iterable[Logger], config: dict) -> None:
    """Records the run's resolved config with every logger (W&B's run config, the CSV logger's
    hparams.yaml, TensorBoard's hparams)."""
    for logger in loggers:
        logger.log_hyperparams(config)


def end_wandb_runs(loggers: Iterable[Logger]) -> None:
    """Ends the loggers' W&B runs: Lightning leaves them open, and the next run in this process
    (another fit in the same notebook) would log into the same one."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def log_results(loggers: Iterable[Logger], record: dict, plot_paths: list[Path],
                table: str | None = None) -> None:
    """Hands the results record (and `table`, its results.md: None, the few-shot one) and the
    run's plots to the loggers that can show them, and ends the W&B run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(record)
            for path in plot_paths:
                logger.log_image(f"plots/{path.stem}", [str(path)])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("results", table or results_table(record))
            for path in plot_paths:
                logger.experiment.add_image(f"plots/{path.stem}", imread(path), dataformats="HWC")
            logger.experiment.flush()
    end_wandb_runs(loggers)
