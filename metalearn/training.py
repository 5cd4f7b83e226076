"""train.py's job: meta-train, validate and test what a composed config describes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metalearn.build import build, instantiate_all
from metalearn.checkpoints import StoreConfigInCheckpoint
from metalearn.config_tree import print_config_tree
from metalearn.errors import UserError
from metalearn.files import write_text
from metalearn.loggers import log_config, log_results
from metalearn.plots import write_learning_curves
from metalearn.results import describe, results_record, write_results
from metalearn.sweeps import optimized_value

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    if ckpt_path is None:
        return None
    path = Path(output_dir) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}")
    return str(path)


def make_trainer(cfg: DictConfig, resolved: dict) -> L.Trainer:
    """The config's Lightning Trainer with its callbacks and loggers; checkpoints carry `resolved`,
    the config that rebuilds the model."""
    callbacks = instantiate_all(cfg.get("callbacks")) + [StoreConfigInCheckpoint(resolved)]
    return instantiate(cfg.trainer, callbacks=callbacks,
                       logger=instantiate_all(cfg.get("logger")) or False)


def write_config(output_dir: Path, resolved: dict) -> None:
    """config.yaml: the resolved config of the run."""
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(resolved))


def train(cfg: DictConfig) -> dict:
    """Meta-trains, validates and tests; writes config.yaml and results.json into the run dir."""
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model = build(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    write_config(output_dir, resolved)
    print_config_tree(cfg, output_dir / "config_tree.log")

    trainer = make_trainer(cfg, resolved)
    log_config(trainer.loggers, resolved)
    trainer.fit(model, datamodule=datamodule,
                ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir))

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
    record.update(
        seed=cfg.seed,
        tested_checkpoint=test_ckpt,
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
