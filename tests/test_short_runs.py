"""Defaults that fit the user's data, and short runs that work: validation at the end of any run
and every `eval_frequency` outer steps, a loss curve of several points for a short run, a
progress bar whose ETA stops where max_steps or max_time stops the run, algorithm defaults capped
at the classes a dataset has, the num_tasks rounding said only when it matters, and Lightning's
noise kept out of the output."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.demos.boring_classes import BoringModel
from omegaconf import OmegaConf

from metalearn.data.episodes import ClassExamples
from metalearn.data.task_family import ClassificationTaskFamily
from metalearn.errors import NonFiniteError, UserError
from metalearn.evaluation.plots import csv_rows
from metalearn.run import progress
from metalearn.run.build import build
from metalearn.run.engine import stop_message
from metalearn.run.evaluate import evaluate
from metalearn.run.training import train
from tests.conftest import ROOT, make_config

TINY = ["dataset.split=lake", "dataset.rotations=false", "backbone.hidden_channels=8",
        "episode.val_episodes=4", "episode.test_episodes=8", "trainer.deterministic=true",
        "seed=3"]


def logged_steps(run_dir: Path, key: str) -> list[int]:
    return [row["step"] for row in csv_rows(run_dir / "csv" / "metrics.csv") if key in row]


# Validation at the end and every eval_frequency steps --------------------------------------------
@pytest.mark.slow
def test_a_run_shorter_than_an_epoch_validates_and_tests_its_chosen_checkpoint(tmp_path):
    # an epoch is 1,000 outer steps; the run stops after 3
    record = train(make_config([*TINY, "trainer.max_steps=3"], tmp_path))
    assert record["train_steps"] == 3
    assert record["tested_checkpoint"] == "checkpoints/epoch_000.ckpt"
    assert "best_val_acc" in record
    assert logged_steps(tmp_path, "val/acc") == [2]  # once, after the last step
    assert logged_steps(tmp_path, "train/loss") == [0, 1, 2]  # a curve, not one point


@pytest.mark.slow
def test_eval_frequency_counts_outer_steps_across_epochs(tmp_path):
    # 2 epochs of 6 steps, validated after steps 4, 8 and 12 (the last), not at epoch ends
    record = train(make_config([*TINY, "episode.num_tasks=6", "num_epochs=2",
                                "eval_frequency=4"], tmp_path))
    assert record["train_steps"] == 12
    assert logged_steps(tmp_path, "val/acc") == [3, 7, 11]
    assert record["tested_checkpoint"] in ("checkpoints/epoch_000.ckpt",
                                           "checkpoints/epoch_001.ckpt")


@pytest.mark.slow
def test_a_run_that_ends_between_validations_validates_at_its_end(tmp_path):
    # 10 steps, validated every 4: after steps 4 and 8, and after the last
    train(make_config([*TINY, "episode.num_tasks=10", "num_epochs=1", "eval_frequency=4"],
                      tmp_path))
    assert logged_steps(tmp_path, "val/acc") == [3, 7, 9]


RESUMED = [*TINY, "episode.num_tasks=6", "num_epochs=2", "eval_frequency=4",
           "callbacks=step_checkpoints", "callbacks.step_checkpoint.every_n_train_steps=2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, Path]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return train(make_config(RESUMED, run_dir)), run_dir


@pytest.mark.slow
# at a validation (the step's checkpoint is written after it: RunCheckpoint), between two
@pytest.mark.parametrize("stop_at", [4, 5])
def test_a_run_resumed_inside_an_epoch_validates_as_the_uninterrupted_one(uninterrupted,
                                                                         tmp_path, stop_at):
    expected, whole_dir = uninterrupted
    sigterm = ["+callbacks.sigterm._target_=tests.helpers.SigtermAtStep",
               f"+callbacks.sigterm.step={stop_at}"]
    with pytest.raises(UserError, match="stopped by SIGTERM"):
        train(make_config([*RESUMED, *sigterm], tmp_path))
    record = train(make_config([*RESUMED, "ckpt_path=last"], tmp_path))
    for key in ("test_acc", "best_val_acc", "train_steps", "tested_checkpoint"):
        assert record[key] == expected[key], key
    assert csv_rows(tmp_path / "csv" / "metrics.csv") == csv_rows(whole_dir / "csv" / "metrics.csv")
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    whole = torch.load(whole_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


# The progress bar --------------------------------------------------------------------------------
class RecordTotals(Callback):
    """The training bar's total after each batch (added after the bar)."""

    def __init__(self, bar: progress.TasksPerSecondProgressBar):
        self.bar, self.totals = bar, []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.totals.append(self.bar.train_progress_bar.total)


def fit_boring(bar: progress.TasksPerSecondProgressBar, **trainer_args) -> list[int]:
    totals = RecordTotals(bar)
    trainer = L.Trainer(limit_train_batches=10, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[bar, totals], **trainer_args)
    trainer.fit(BoringModel())
    return totals.totals


def test_the_progress_bar_ends_its_epoch_where_max_steps_ends_the_run():
    bar = progress.TasksPerSecondProgressBar(tasks_per_batch=1)
    assert fit_boring(bar, max_epochs=2, max_steps=13) == [10] * 10 + [3] * 3


def test_the_progress_bar_eta_ends_when_max_time_runs_out(monkeypatch):
    # training starts at 0 s, the epoch at 10 s, then a batch ends every second, with 2 s left
    clock = iter([0.0, 10.0, *(10.0 + batch for batch in range(1, 11))])
    monkeypatch.setattr(progress, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(Timer, "time_remaining", lambda self, stage="train": 2.0)
    bar = progress.TasksPerSecondProgressBar(tasks_per_batch=1)
    totals = fit_boring(bar, max_epochs=1, max_time={"hours": 1})
    # 1 batch a second: 2 more batches fit in the time left, so the ETA is 2 s
    assert totals[:3] == [3, 4, 5]


# Defaults that fit the data ----------------------------------------------------------------------
def few_classes(classes: int = 8) -> ClassificationTaskFamily:
    """Random 1x28x28 images: `classes` classes of 20 examples in each split."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes, 20, 1, 28, 28), dtype=torch.uint8,
                           generator=generator)
    split = ClassExamples.dense(images, [f"class {c}" for c in range(classes)])
    return ClassificationTaskFamily({"train": split, "val": split, "test": split})


@pytest.mark.parametrize("algorithm", ["protonet", "siamese"])
def test_an_algorithms_default_train_n_way_is_capped_at_the_classes(algorithm, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    datamodule, _ = build(make_config([f"algorithm={algorithm}"], tmp_path), tasks=few_classes())
    assert datamodule.train_n_way == 8  # not 20
    (line,) = [r.getMessage() for r in caplog.records if "train_n_way" in r.getMessage()]
    assert line == (f"episode.train_n_way: {algorithm}'s default of 20 is more than the 8 classes "
                    "of the meta-train split; meta-training on 8-way tasks")


def test_a_train_n_way_the_user_set_is_not_capped(tmp_path):
    with pytest.raises(UserError, match=r"^episode.train_n_way=20 is more than the 8 classes"):
        build(make_config(["episode.train_n_way=20"], tmp_path), tasks=few_classes())
    # null trains on the test tasks' shape, as before
    datamodule, _ = build(make_config(["episode.train_n_way=null"], tmp_path), tasks=few_classes())
    assert datamodule.train_n_way == 5


ROUNDING = "is not a whole number of meta-batches"


def test_the_default_num_tasks_is_rounded_to_whole_meta_batches_without_a_word(tmp_path, caplog):
    datamodule, _ = build(make_config(["algorithm=maml", "dataset.split=lake"], tmp_path))
    datamodule.train_dataloader()
    assert datamodule.steps_per_epoch == 32  # 1,000 tasks in meta-batches of 32
    assert ROUNDING not in caplog.text


def test_a_num_tasks_the_user_set_is_said_rounded_when_training_only(tmp_path, caplog):
    datamodule, _ = build(make_config(["algorithm=maml", "dataset.split=lake",
                                       "episode.num_tasks=10", "episode.meta_batch_size=4"],
                                      tmp_path))
    assert datamodule.steps_per_epoch == 3
    assert ROUNDING not in caplog.text  # counting steps is not training
    datamodule.train_dataloader()
    assert caplog.text.count(ROUNDING) == 1


@pytest.mark.slow
def test_eval_py_says_nothing_of_num_tasks(tmp_path, caplog):
    train(make_config([*TINY, "algorithm=maml", "episode.num_tasks=3", "episode.meta_batch_size=2",
                       "num_epochs=1"], tmp_path / "run"))
    caplog.clear()
    overrides = [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                 "episode.test_episodes=4"]
    evaluate(make_config(overrides, tmp_path / "eval", "eval"), overrides)
    assert ROUNDING not in caplog.text


# The message of a run that diverged ----------------------------------------------------------------
def diverged(tmp_path: Path, task_type: str, **dataset) -> str:
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "monitor": "val/mse",
                            "algorithm": {"outer_lr": 0.001, "inner_lr": 0.01},
                            "dataset": dataset})
    trainer = SimpleNamespace(checkpoint_callback=None,
                              lightning_module=SimpleNamespace(task_type=task_type))
    return stop_message(NonFiniteError("the meta-training loss became nan at step 3"), cfg, trainer)


def test_a_diverged_regression_on_raw_targets_suggests_standardizing_them(tmp_path):
    message = diverged(tmp_path, "regression", standardize_target=False)
    assert "algorithm.outer_lr=0.001, algorithm.inner_lr=0.01" in message
    assert "dataset.standardize_target=true" in message
    assert "\n" not in message
    for task_type, dataset in (("regression", {"standardize_target": True}), ("regression", {}),
                               ("classification", {"standardize_target": False})):
        assert "standardize_target" not in diverged(tmp_path, task_type, **dataset)


# Lightning's noise -------------------------------------------------------------------------------
def run_script(script: str, *overrides: str) -> str:
    """stdout and stderr of `python <script> <overrides>`, which must succeed."""
    done = subprocess.run([sys.executable, script, *overrides], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_lightning_tips_and_noise_stay_out_of_train_and_eval_output(tmp_path):
    trained = run_script("train.py", *TINY, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")
    evaluated = run_script("eval.py", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
                           "episode.test_episodes=4", f"hydra.run.dir={tmp_path / 'eval'}")
    for output in (trained, evaluated):
        assert "GPU available:" in output  # where it ran is worth a line
        for noise in ("Tip:", "litlogger", "litmodels", "TPU available", "LeafSpec",
                      "could not find the monitored key"):
            assert noise not in output, noise
