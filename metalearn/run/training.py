"""train.py's job: meta-train, validate and test what a composed config describes.

A run owns its directory (locked while it lives, refused if it holds another run), checks that it
can write its checkpoints before training, records how it was made (.hydra/, data_split.json)
once every check has passed, and resumes from a checkpoint as if it had never stopped: weights,
optimiser, loops, the task stream, the metric history and the wall time. A non-finite loss or
score stops it with one line naming the last checkpoint whose meta-val score was finite; it is
never a result. A SIGTERM stops it with one line (and a non-zero exit status) after saving the
step it reached, which it resumes from. The line a failed run ends on also goes into train.log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from metalearn.data.image_cache import files_fingerprint
from metalearn.data.task_family import TaskFamily
from metalearn.errors import UserError
from metalearn.evaluation.classical import ClassicalBaseline
from metalearn.evaluation.plots import write_learning_curves
from metalearn.evaluation.results import describe, results_record, title, write_results
from metalearn.evaluation.rl_results import (
    describe_rl,
    rl_results_record,
    rl_results_table,
    rl_title,
    write_rl_results,
)
from metalearn.files import write_text
from metalearn.paths import component_name, family_name
from metalearn.run.build import instantiate_run
from metalearn.run.checkpoints import CONFIG_KEY, RUN_STATE_KEY, load_checkpoint
from metalearn.run.classical_scores import add_baselines, baseline_lines, configured_baselines
from metalearn.run.config_check import validate
from metalearn.run.engine import fitting, meta_test_scores, rl_test_returns
from metalearn.run.loggers import errors_in_log_files, log_results, route_lightning_logs
from metalearn.run.run_dir import (
    DATA_RECORD,
    check_writable,
    claim,
    clear,
    holds_a_run,
    in_multirun,
    lock,
    write_launch_record,
)
from metalearn.run.sweeps import optimized_value

log = logging.getLogger(__name__)
#: the dataset keys that name the files a run reads (the caches it writes go under data_dir)
SOURCE_KEYS = ("root", "path", "archive_dir", "split_file")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: a path, or "last" for this run directory's last.ckpt. A
    job of a resumed sweep whose directory holds no run yet (it never started, or was refused)
    starts afresh."""
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if ckpt_path == "last" and in_multirun() and not holds_a_run(output_dir):
        log.info("ckpt_path=last: %s holds no run yet; this job starts afresh", output_dir)
        return None
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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_record(path: Path) -> dict[str, str | bool]:
    """Where a dataset key points, resolved: a file with its sha256; a folder with the
    fingerprint of its files' names, sizes and times (as the image caches take it), leaving out
    the cache/ folder where the benchmarks cache their decoded images."""
    record: dict[str, str | bool] = {"path": str(path.resolve())}
    if path.is_file():
        record["sha256"] = sha256(path)
    elif path.is_dir():
        files = [file for file in path.rglob("*") if file.is_file()
                 and not file.is_relative_to(path / "cache")]
        record["fingerprint"] = files_fingerprint(files, path)
    else:
        record["missing"] = True
    return record


def data_record(dataset: DictConfig, tasks: TaskFamily, name: str | None = None) -> dict:
    """The task family's name (`name`; None: the dataset's config name) and target, the files
    and folders its keys name, and the class (or group) names of each split (null where tasks
    are drawn from a distribution: the sinusoid, environments)."""
    sources = {key: source_record(Path(str(dataset[key])).expanduser())
               for key in SOURCE_KEYS if dataset.get(key)}
    return {"dataset": name or component_name(dataset), "target": dataset._target_,
            "sources": sources, "splits": tasks.split_record()}


def write_data_record(run_dir: Path, cfg: DictConfig, tasks: TaskFamily) -> None:
    """Writes the `data_record` of the run's dataset (or env) into run_dir/data_split.json,
    whole."""
    node = cfg.env if cfg.get("env") is not None else cfg.dataset
    record = data_record(node, tasks, family_name(cfg))
    write_text(run_dir / DATA_RECORD, json.dumps(record, indent=1) + "\n")


def train(cfg: DictConfig) -> dict:
    """Meta-trains, validates and tests; writes config.yaml and results.json into the run dir.
    The error it ends on also goes into the run's log file."""
    with errors_in_log_files():
        route_lightning_logs()
        return checked_train(cfg)


def checked_train(cfg: DictConfig) -> dict:
    """`train`: every check first (settings, run directory, data, the checkpoint resumed), then
    the run's records, then training."""
    started = time.time()
    validate(cfg)  # settings first: a mistake never touches the run directory
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    main_process = rank_zero_only.rank == 0  # DDP's other processes share rank 0's directory
    with contextlib.ExitStack() as stack:
        if main_process:
            check_writable(output_dir)
            stack.enter_context(lock(output_dir))
            resuming = ckpt_path is not None and ckpt_path.resolve().is_relative_to(
                output_dir.resolve())
            replacing = claim(output_dir, resuming, cfg.get("overwrite", False))
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, model = instantiate_run(cfg)
        baselines = configured_baselines(cfg, datamodule.tasks)
        model.make_optimizer()  # a model without weights to train is refused before the run
        run_state = {}
        if ckpt_path is not None:
            run_state = checked_resume(cfg, ckpt_path, model).get(RUN_STATE_KEY) or {}
            started -= run_state.get("wall_time_s", 0.0)
        if main_process:  # the checks have passed: the directory is this run's
            clear(output_dir, earlier_run=replacing)
            check_writable(output_dir / "checkpoints")
            write_launch_record(output_dir, cfg)
            write_data_record(output_dir, cfg, datamodule.tasks)
        with fitting(cfg, model, datamodule, ckpt_path, run_state, started) as trainer:
            return meta_test(cfg, trainer, model, datamodule, started, baselines)


def meta_test(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule,
              datamodule: L.LightningDataModule, started: float,
              baselines: list[ClassicalBaseline] = ()) -> dict:
    """Tests the best (or last) weights of a trained run, and the classical `baselines` on the
    same episodes, and writes its results."""
    test_ckpt = tested_weights(cfg, trainer, model)
    if cfg.get("env") is not None:
        return meta_test_rl(cfg, trainer, model, datamodule, started, test_ckpt)
    results, per_episode = meta_test_scores(trainer, model, datamodule)

    record = results_record(cfg, results)
    add_baselines(record, list(baselines), datamodule, per_episode)
    add_run_facts(cfg, trainer, record, started, test_ckpt)
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:  # under DDP every process gets here with the same record
        results_path = write_results(output_dir, record)
        print(describe(record))
        for line in baseline_lines(record):
            print(line)
        print(f"Results: {results_path}")
        log_results(trainer.loggers, record, [write_learning_curves(output_dir, trainer, title(record))])
    return record


def tested_weights(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule) -> str | None:
    """Loads the best checkpoint's weights into `model` where the run tests them
    (test_ckpt=best) and returns its path; None: the final weights are tested."""
    test_ckpt = None
    if cfg.test_ckpt == "best" and trainer.checkpoint_callback is not None:
        test_ckpt = trainer.checkpoint_callback.best_model_path or None
    if test_ckpt is None:
        log.info("Testing the final weights")
    else:
        model.load_state_dict(load_checkpoint(test_ckpt)["state_dict"])
    return test_ckpt


def add_run_facts(cfg: DictConfig, trainer: L.Trainer, record: dict, started: float,
                  test_ckpt: str | None) -> None:
    """The run's best meta-val score, seed, tested checkpoint, steps and wall time, into the
    results record."""
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


def meta_test_rl(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule,
                 datamodule: L.LightningDataModule, started: float,
                 test_ckpt: str | None) -> dict:
    """The meta-test of meta-reinforcement learning: the return on the held-out tasks before
    and after each adaptation step up to algorithm.test_inner_steps, written with the run's
    facts (results.json, results.md, the plot of return by steps and the learning curves)."""
    per_task = rl_test_returns(trainer, model, datamodule)
    record = rl_results_record(cfg, per_task, model.test_inner_steps)
    add_run_facts(cfg, trainer, record, started, test_ckpt)
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        results_path = write_rl_results(output_dir, record)
        print(describe_rl(record))
        print(f"Results: {results_path}")
        plots = [write_learning_curves(output_dir, trainer, rl_title(record)),
                 output_dir / "plots" / "return_by_steps.png"]
        log_results(trainer.loggers, record, plots, rl_results_table(record))
    return record


def train_job(cfg: DictConfig) -> float | None:
    """train.py's job: trains, then returns the score a hyperparameter search optimises (None
    without `optimized_metric`)."""
    return optimized_value(cfg, train(cfg))
