"""What train.py and eval.py do, as functions of a composed config."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from metalearn.algorithms.base import EpisodicModule
from metalearn.callbacks import CONFIG_KEY, StoreConfigInCheckpoint
from metalearn.config_check import (
    check_algorithm_fits,
    check_config,
    check_episode_fits,
    component_name,
)
from metalearn.config_tree import print_config_tree
from metalearn.data.datamodule import EpisodicDataModule
from metalearn.errors import UserError
from metalearn.loggers import log_config, log_results
from metalearn.models.backbones import UserBackbone
from metalearn.plots import write_report
from metalearn.sweeps import in_multirun, optimized_value, record_job_error

log = logging.getLogger(__name__)


def project_root() -> str:
    """The folder holding configs/ (the repository), where data/ and outputs/ go by default."""
    return str(Path(__file__).resolve().parents[1])


OmegaConf.register_new_resolver("project_root", project_root, replace=True)
USER_BACKBONE = f"{UserBackbone.__module__}.{UserBackbone.__qualname__}"


# Building ---------------------------------------------------------------------------------------
def find_user_error(error: BaseException | None) -> UserError | None:
    """The UserError behind an exception (Hydra's instantiate wraps what constructors raise)."""
    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__ or error.__context__
    return None


def instantiate_checked(node: DictConfig, **kwargs) -> Any:
    """hydra.utils.instantiate, letting a UserError raised by a constructor through as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        raise user_error from None


def build(cfg: DictConfig, model: nn.Module | None = None) -> tuple[EpisodicDataModule, EpisodicModule]:
    """Checks the config, then instantiates the data module and the algorithm it describes.

    `model`, a user's network, is the backbone of a config whose backbone is a UserBackbone.
    """
    check_config(cfg)
    tasks = instantiate_checked(cfg.dataset)
    check_algorithm_fits(cfg, tasks)
    check_episode_fits(cfg, tasks)
    datamodule = instantiate(cfg.episode, tasks=tasks)
    user_backbone = cfg.backbone._target_ == USER_BACKBONE
    if model is not None and not user_backbone:
        raise UserError(f"this config's backbone is {component_name(cfg.backbone)}, not a "
                        "user-defined network; build it without model=")
    backbone_args = {"model": model} if model is not None else {}
    backbone = instantiate_checked(cfg.backbone, input_shape=tasks.input_shape, **backbone_args)
    output_dim = cfg.episode.n_way if tasks.task_type == "classification" else tasks.output_dim
    model = instantiate_checked(cfg.algorithm, backbone=backbone, task_type=tasks.task_type,
                                output_dim=output_dim)
    return datamodule, model


def instantiate_all(nodes: DictConfig | None) -> list[Any]:
    """Instantiates every `_target_` node of a group such as callbacks or logger."""
    if not nodes:
        return []
    return [instantiate(node) for node in nodes.values() if node and "_target_" in node]


def results_record(cfg: DictConfig, scores: dict[str, float]) -> dict:
    """The results.json schema shared by train.py and eval.py."""
    record = {
        "algorithm": component_name(cfg.algorithm),
        "dataset": component_name(cfg.dataset),
        "n_way": cfg.episode.n_way,
        "k_shot": cfg.episode.k_shot,
        "query_size": cfg.episode.query_size,
        "test_episodes": cfg.episode.test_episodes,
        "eval_seed": cfg.episode.eval_seed,
    }
    if "split" in cfg.dataset:
        record["split"] = cfg.dataset.split
    for key, value in scores.items():
        record[key.replace("test/", "test_")] = value  # test/acc -> test_acc
    return record


def write_json(path: Path, record: dict) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(path)


def describe(record: dict) -> str:
    if "test_acc" in record:
        shape = f"{record['n_way']}-way {record['k_shot']}-shot"
        score = f"accuracy {100 * record['test_acc']:.2f}% +- {100 * record['test_acc_ci95']:.2f}%"
    else:
        shape = f"{record['k_shot']}-shot"
        score = f"MSE {record['test_mse']:.4f} +- {record['test_mse_ci95']:.4f}"
    return (f"{record['algorithm']} on {record['dataset']} {shape}: meta-test {score} "
            f"(95% CI, {record['test_episodes']} episodes)")


# Training ---------------------------------------------------------------------------------------
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


def train(cfg: DictConfig) -> dict:
    """Meta-trains, validates and tests; writes config.yaml and results.json into the run dir."""
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model = build(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
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
        write_json(output_dir / "results.json", record)
        print(describe(record))
        print(f"Results: {output_dir / 'results.json'}")
        log_results(trainer.loggers, record, write_report(output_dir, record, trainer))
    return record


def train_job(cfg: DictConfig) -> float | None:
    """train.py's job: trains, then returns the score a hyperparameter search optimises (None
    without `optimized_metric`)."""
    return optimized_value(cfg, train(cfg))


# Evaluation -------------------------------------------------------------------------------------
EVAL_ONLY_KEYS = ("ckpt_path", "eval", "hydra")


def load_checkpoint(ckpt_path: str) -> dict:
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path!r}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UserError(f"ckpt_path={ckpt_path!r} is not a readable checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint:
        raise UserError(f"ckpt_path={ckpt_path!r} was not written by metalearn's train.py "
                        f"(it has no {CONFIG_KEY!r} entry)")
    return checkpoint


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys (or groups) named by command-line overrides, such as 'episode.k_shot'."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [override.key_or_group for override in parsed]


def evaluate(cfg: DictConfig, overrides: Iterable[str] = ()) -> dict:
    """Tests a checkpoint on the meta-test split, at one or several shots.

    The model and data are rebuilt from the training config stored in the checkpoint; of the
    eval config, only the keys the user overrode (`overrides`) replace the stored ones.
    """
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run_cfg = OmegaConf.create(checkpoint[CONFIG_KEY])
    resolved_eval = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in override_keys(overrides):
        if key.split(".")[0] not in EVAL_ONLY_KEYS:
            OmegaConf.update(run_cfg, key, OmegaConf.select(resolved_eval, key), merge=False)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shots = list(cfg.eval.shots) if cfg.eval.shots else [run_cfg.episode.k_shot]

    by_shot = []
    for k_shot in shots:
        shot_cfg = run_cfg.copy()
        shot_cfg.episode.k_shot = k_shot
        datamodule, model = build(shot_cfg)
        model.load_state_dict(checkpoint["state_dict"])
        trainer: L.Trainer = instantiate(shot_cfg.trainer, logger=False, callbacks=[],
                                         default_root_dir=str(output_dir),
                                         enable_progress_bar=False)
        trainer.test(model, datamodule=datamodule, verbose=False)
        record = results_record(shot_cfg, model.test_results)
        print(describe(record))
        by_shot.append(record)

    result = dict(by_shot[0], checkpoint=str(Path(cfg.ckpt_path).resolve()))
    if len(by_shot) > 1:
        result["by_shot"] = by_shot
    write_json(output_dir / "results.json", result)
    print(f"Results: {output_dir / 'results.json'}")
    return result


# Entry points -----------------------------------------------------------------------------------
def run_cli(function: Callable[..., Any], *args) -> Any:
    """Runs an entry point's function. A user's mistake becomes one line on stderr and exit status
    2; anything else is a bug and keeps its traceback. In a multirun, a job's mistake ends only
    that job: it is recorded for the sweep summary (which then ends the sweep with status 2), and
    the job returns None to the sweeper."""
    try:
        return function(*args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        if not in_multirun():
            sys.exit(2)
        record_job_error(str(error))
        return None
