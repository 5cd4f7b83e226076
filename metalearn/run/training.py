"""train.py's job: meta-train, validate and test what a composed config describes.

A run owns its directory (locked while it lives, refused if it holds another run), checks that it
can write its checkpoints before training, and resumes from a checkpoint as if it had never
stopped: weights, optimiser, loops, the task stream, the metric history and the wall time. A
non-finite loss or score stops it with one line naming the last checkpoint whose meta-val score
was finite; it is never a result. A SIGTERM stops it with one line (and a non-zero exit status)
after saving the step it reached, which it resumes from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from metalearn.algorithms.base import NonFiniteError
from metalearn.errors import UserError
from metalearn.evaluation.plots import write_learning_curves
from metalearn.evaluation.results import describe, results_record, write_results
from metalearn.files import write_text
from metalearn.run.build import build, instantiate_all, instantiate_trainer, validate
from metalearn.run.checkpoints import (
    CONFIG_KEY,
    RUN_STATE_KEY,
    AtomicCheckpointIO,
    RunState,
    load_checkpoint,
)
from metalearn.run.config_check import component_name
from metalearn.run.config_tree import print_config_tree
from metalearn.run.loggers import CSVLogger, end_wandb_runs, log_config, log_results
from metalearn.run.run_dir import check_writable, claim, lock
from metalearn.run.sweeps import optimized_value

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> Path | None:
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}")
    return path


def make_trainer(cfg: DictConfig, resolved: dict, input_shape: Sequence[int],
                 started: float | None = None) -> L.Trainer:
    """The config's Lightning Trainer with its callbacks and loggers; checkpoints carry `resolved`,
    the config that rebuilds the model, and the run's state. A setting Lightning refuses is a
    UserError in one line."""
    callbacks = instantiate_all(cfg.get("callbacks")) + [RunState(resolved, input_shape, started)]
    return instantiate_trainer(cfg.trainer, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                               logger=instantiate_all(cfg.get("logger")) or False)


def write_config(output_dir: Path, resolved: dict) -> None:
    """config.yaml: the resolved config of the run."""
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(resolved))


def checked_resume(cfg: DictConfig, ckpt_path: Path, model: L.LightningModule) -> dict:
    """The checkpoint a run resumes from, which must be this algorithm's with these shapes."""
    checkpoint = load_checkpoint(str(ckpt_path))
    stored = OmegaConf.create(checkpoint[CONFIG_KEY])
    if stored.algorithm._target_ != cfg.algorithm._target_:
        raise UserError(f"ckpt_path={str(ckpt_path)!r} is a checkpoint of "
                        f"{component_name(stored.algorithm)}; this run is "
                        f"{component_name(cfg.algorithm)}")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise UserError(f"ckpt_path={str(ckpt_path)!r} does not fit this run's model "
                        f"({str(error).splitlines()[1].strip()}); resume it with the settings "
                        "it was trained with") from None
    return checkpoint


def resolve_monitor(cfg: DictConfig, model: L.LightningModule) -> None:
    """Sets `monitor` and `monitor_mode` left null to the algorithm's own score, then checks
    that the monitor is one of its meta-val scores."""
    if cfg.get("monitor") is None:
        cfg.monitor = model.validation_metrics[0]
    if cfg.get("monitor_mode") is None:
        cfg.monitor_mode = "min" if cfg.monitor.endswith("mse") else "max"
    if cfg.monitor_mode not in ("min", "max"):
        raise UserError(f"monitor_mode={cfg.monitor_mode!r} must be max or min")
    if cfg.monitor not in model.validation_metrics:
        raise UserError(f"monitor={cfg.monitor!r} is not a meta-validation score of "
                        f"{component_name(cfg.algorithm)}; use one of: "
                        f"{', '.join(model.validation_metrics)}")


def stop_message(error: NonFiniteError, cfg: DictConfig, trainer: L.Trainer) -> str:
    """The non-finite error, the last checkpoint whose meta-val score was finite, and what to
    change."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.best_model_path:
        kept = (f"The last checkpoint with a finite meta-val score is "
                f"{Path(callback.best_model_path).relative_to(Path(cfg.paths.output_dir))} "
                f"({cfg.monitor} {callback.best_model_score.item():.4f})")
    else:
        kept = "No checkpoint had a finite meta-val score"
    rates = [f"{key}={value}" for key, value in cfg.algorithm.items()
             if key in ("outer_lr", "inner_lr") and value is not None]
    return (f"{error}. {kept}. Start a new run with smaller learning rates "
            f"({', '.join(f'algorithm.{rate}' for rate in rates)}) or with "
            "trainer.gradient_clip_val set: resuming would keep the optimiser's learning rate")


def train(cfg: DictConfig) -> dict:
    """Meta-trains, validates and tests; writes config.yaml and results.json into the run dir."""
    started = time.time()
    validate(cfg)  # settings first: a mistake never touches the run directory
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    with contextlib.ExitStack() as stack:
        if rank_zero_only.rank == 0:  # DDP's other processes share rank 0's directory
            check_writable(output_dir)
            stack.enter_context(lock(output_dir))
            resuming = ckpt_path is not None and ckpt_path.resolve().is_relative_to(
                output_dir.resolve())
            claim(output_dir, resuming, cfg.get("overwrite", False))
            check_writable(output_dir / "checkpoints")
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, model = build(cfg)
        resolve_monitor(cfg, model)
        run_state = {}
        if ckpt_path is not None:
            run_state = checked_resume(cfg, ckpt_path, model).get(RUN_STATE_KEY) or {}
            started -= run_state.get("wall_time_s", 0.0)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        trainer = make_trainer(cfg, resolved, datamodule.tasks.input_shape, started)
        stack.callback(end_wandb_runs, trainer.loggers)  # also when the run fails
        write_config(output_dir, resolved)
        print_config_tree(cfg, output_dir / "config_tree.log")
        if run_state.get("csv_rows") is not None:
            for logger in trainer.loggers:
                if isinstance(logger, CSVLogger):
                    logger.keep_rows(run_state["csv_rows"], run_state.get("pending_row"))
        log_config(trainer.loggers, resolved)
        try:
            trainer.fit(model, datamodule=datamodule,
                        ckpt_path=None if ckpt_path is None else str(ckpt_path))
        except NonFiniteError as error:
            raise UserError(stop_message(error, cfg, trainer)) from None
        except SIGTERMException:  # Lightning's graceful stop would exit with status 0
            raise UserError(f"stopped by SIGTERM after {trainer.global_step} outer steps, before "
                            f"the meta-test; resume with ckpt_path=last (in {output_dir})") from None
        return meta_test(cfg, trainer, model, datamodule, started)


def meta_test(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule,
              datamodule: L.LightningDataModule, started: float) -> dict:
    """Tests the best (or last) weights of a trained run and writes its results."""
    test_ckpt = None
    if cfg.test_ckpt == "best" and trainer.checkpoint_callback is not None:
        test_ckpt = trainer.checkpoint_callback.best_model_path or None
    if test_ckpt is None:
        log.info("Testing the final weights")
    trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)

    record = results_record(cfg, model.test_results)
    best_score = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_score
    if best_score is not None:
        # the best meta-val score of the run: what hyperparameter searches optimise
        record[f"best_{cfg.monitor.replace('/', '_')}"] = best_score.item()
    output_dir = Path(cfg.paths.output_dir)
    record.update(
        seed=cfg.seed,
        tested_checkpoint=test_ckpt and os.path.relpath(test_ckpt, output_dir),
        train_steps=trainer.global_step,
        wall_time_s=round(time.time() - started, 1),
    )
    if trainer.is_global_zero:  # under DDP every process gets here with the same record
        results_path = write_results(output_dir, record)
        print(describe(record))
        print(f"Results: {results_path}")
        log_results(trainer.loggers, record, [write_learning_curves(output_dir, trainer)])
    return record


def train_job(cfg: DictConfig) -> float | None:
    """train.py's job: trains, then returns the score a hyperparameter search optimises (None
    without `optimized_metric`)."""
    return optimized_value(cfg, train(cfg))
