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
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from metalearn.errors import UserError
from metalearn.evaluation.plots import write_learning_curves
from metalearn.evaluation.results import describe, results_record, write_results
from metalearn.paths import component_name
from metalearn.run.build import instantiate_run
from metalearn.run.checkpoints import CONFIG_KEY, RUN_STATE_KEY, load_checkpoint
from metalearn.run.config_check import validate
from metalearn.run.engine import fitting, meta_test_scores
from metalearn.run.loggers import log_results
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
        datamodule, model = instantiate_run(cfg)
        run_state = {}
        if ckpt_path is not None:
            run_state = checked_resume(cfg, ckpt_path, model).get(RUN_STATE_KEY) or {}
            started -= run_state.get("wall_time_s", 0.0)
        with fitting(cfg, model, datamodule, ckpt_path, run_state, started) as trainer:
            return meta_test(cfg, trainer, model, datamodule, started)


def meta_test(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule,
              datamodule: L.LightningDataModule, started: float) -> dict:
    """Tests the best (or last) weights of a trained run and writes its results."""
    test_ckpt = None
    if cfg.test_ckpt == "best" and trainer.checkpoint_callback is not None:
        test_ckpt = trainer.checkpoint_callback.best_model_path or None
    if test_ckpt is None:
        log.info("Testing the final weights")
    else:
        model.load_state_dict(load_checkpoint(test_ckpt)["state_dict"])
    results, _ = meta_test_scores(trainer, model, datamodule)

    record = results_record(cfg, results)
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
