"""The run's loggers beyond Lightning's defaults: Weights & Biases set up so that it never prompts
for a login, the resolved config for every logger, and the results and plots at the end of a run."""

from __future__ import annotations

import netrc
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from matplotlib.image import imread

from metalearn.results import results_table
from metalearn.sweeps import in_multirun

WANDB_HOST = "https://api.wandb.ai"


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


def log_results(loggers: Iterable[Logger], record: dict, plot_paths: list[Path]) -> None:
    """Hands the results record and the run's plots to the loggers that can show them, and ends
    the W&B run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(record)
            for path in plot_paths:
                logger.log_image(f"plots/{path.stem}", [str(path)])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("results", results_table(record))
            for path in plot_paths:
                logger.experiment.add_image(f"plots/{path.stem}", imread(path), dataformats="HWC")
            logger.experiment.flush()
    end_wandb_runs(loggers)
