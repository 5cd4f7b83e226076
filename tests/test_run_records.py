"""Nothing lost, everything recorded: a run directory says how its run was made (.hydra/,
config.yaml, data_split.json, train.log) and a refused command changes none of it; a sweep
directory keeps its finished jobs and its summary, resumes, and refuses a wrong search before
its first trial."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from metalearn.errors import UserError
from metalearn.run import loggers
from metalearn.run.build import instantiate_checked
from metalearn.run.compose import CONFIG_DIR
from metalearn.run.run_dir import claim, clear, holds_a_run
from metalearn.run.sweeps import FAILED, check_sweep, check_sweep_dir, write_summary
from metalearn.run.training import data_record, source_record, train
from tests.budgets import TABLES, write_digits_table
from tests.conftest import make_config
from tests.helpers import user_error
from tests.test_run_safety import LAKE, TINY, one_line_error, run_script
from tests.test_sweeps import write_fake_job

#: 30 + 15 examples per class: more than Omniglot's 20, refused once the data is loaded
TOO_MANY_SHOTS = "episode.k_shot=30"
DATA_MISTAKE = "episode.k_shot + episode.query_size = 30 + 15 = 45 is more than the 20 examples"


def files_of(folder: Path, *left_out: str) -> dict[str, bytes]:
    """Every file under folder (by relative path) with its bytes, but those named `left_out`."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and path.name not in left_out}


def finished_run(run_dir: Path) -> None:
    """A run directory as a finished run leaves it."""
    for name, text in {".hydra/config.yaml": "seed: 1\n", ".hydra/hydra.yaml": "hydra: {}\n",
                       ".hydra/overrides.yaml": "- seed=1\n", "config.yaml": "seed: 1\n",
                       "results.json": '{"test_acc": 0.5}\n', "data_split.json": "{}\n",
                       "checkpoints/last.ckpt": "weights", "train.log": "the run's lines\n"
                       }.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(text)


# A refused run changes nothing --------------------------------------------------------------------
@pytest.mark.parametrize("refusal", ["holds a run", "in use"])
def test_a_refused_run_leaves_the_records_in_its_directory_as_they_were(tmp_path, refusal):
    finished_run(tmp_path)
    before = files_of(tmp_path, "train.log", ".lock")
    with open(tmp_path / ".lock", "a+") as lock:
        if refusal == "in use":  # as a live run holds it
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
        error = one_line_error(run_script("train.py", *LAKE, "seed=7",
                                          f"hydra.run.dir={tmp_path}"))
    expected = (f"error: run directory {tmp_path} already holds a run; resume it with "
                "ckpt_path=last" if refusal == "holds a run" else
                f"error: run directory {tmp_path} is in use by another run (process "
                f"{os.getpid()})")
    assert error.startswith(expected)
    assert files_of(tmp_path, "train.log", ".lock") == before  # .hydra/ and config.yaml too
    # the log keeps the run's lines and adds the refusal
    log_lines = (tmp_path / "train.log").read_text().splitlines()
    assert log_lines[0] == "the run's lines" and log_lines[-1].endswith(error)


def test_a_run_refused_on_its_data_leaves_nothing_that_blocks_the_corrected_one(tmp_path):
    assert user_error(train, make_config([*LAKE, TOO_MANY_SHOTS], tmp_path)).startswith(
        DATA_MISTAKE)
    assert not (tmp_path / "checkpoints").exists()
    assert not holds_a_run(tmp_path)


def test_only_a_checkpoint_or_results_make_a_directory_hold_a_run(tmp_path):
    # what a refused launch, or a run stopped before its first checkpoint, leaves
    for name in (".hydra/overrides.yaml", "config.yaml", "csv/metrics.csv", "error.txt",
                 "train.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    (tmp_path / "checkpoints").mkdir()
    assert not holds_a_run(tmp_path)
    assert claim(tmp_path, resuming=False, overwrite=False) is False
    clear(tmp_path, earlier_run=False)  # a run that takes the directory drops the old error
    assert not (tmp_path / "error.txt").exists() and (tmp_path / "config.yaml").exists()

    (tmp_path / "checkpoints" / "epoch_000.ckpt").write_text("weights")
    assert holds_a_run(tmp_path)
    with pytest.raises(UserError, match="already holds a run"):
        claim(tmp_path, resuming=False, overwrite=False)
    assert claim(tmp_path, resuming=True, overwrite=False) is False
    # overwrite=true: the earlier run is removed only once this run's own checks have passed
    assert claim(tmp_path, resuming=False, overwrite=True) is True
    assert (tmp_path / "checkpoints" / "epoch_000.ckpt").exists()
    clear(tmp_path, earlier_run=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train.log"]


# The log file ---------------------------------------------------------------------------------------
@pytest.fixture
def lightning_loggers():
    """Lightning's loggers as it sets them up when imported before logging is (train.py's case:
    a console handler of their own, not propagating), restored afterwards."""
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
             for name in loggers.LIGHTNING_LOGGERS}
    own = logging.StreamHandler()
    for name in loggers.LIGHTNING_LOGGERS[1:]:
        logging.getLogger(name).addHandler(own)
        logging.getLogger(name).propagate = False
    yield own
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


def test_lightnings_lines_and_the_error_a_run_ends_on_go_into_the_log_file(tmp_path,
                                                                          lightning_loggers):
    log_file = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(log_file)
    try:
        loggers.route_lightning_logs()
        assert lightning_loggers not in logging.getLogger("lightning.pytorch").handlers
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info(
            "`Trainer.fit` stopped: `max_epochs=1` reached.")
        with pytest.raises(UserError), loggers.errors_in_log_files():
            raise UserError("episode.k_shot=30 is too many")
        with pytest.raises(ZeroDivisionError), loggers.errors_in_log_files():
            print(1 / 0)
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()
    text = (tmp_path / "train.log").read_text()
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in text
    assert "error: episode.k_shot=30 is too many" in text
    assert "Traceback" in text and "ZeroDivisionError: division by zero" in text


# The data a run was made from ---------------------------------------------------------------------
def test_the_data_record_names_the_file_read_and_the_classes_of_each_split(tmp_path):
    write_digits_table()
    table = TABLES / "digits.csv"
    features = make_config(["dataset=features", f"dataset.path={table}"], tmp_path).dataset
    record = data_record(features, instantiate_checked(features))
    assert record["dataset"] == "features"
    assert record["sources"] == {"path": {
        "path": str(table.resolve()), "sha256": hashlib.sha256(table.read_bytes()).hexdigest()}}
    splits = record["splits"]
    assert sorted(splits) == ["test", "train", "val"]
    assert sum(len(names) for names in splits.values()) == len(set().union(*splits.values())) == 10

    omniglot = make_config(LAKE, tmp_path).dataset
    splits = data_record(omniglot, instantiate_checked(omniglot))["splits"]
    # Lake's split: the 964 characters of the background alphabets, the 659 of the evaluation ones
    assert len(splits["train"]) + len(splits["val"]) == 964 and len(splits["test"]) == 659
    assert not set(splits["train"]) & set(splits["val"])

    sinusoid = make_config(["dataset=sinusoid"], tmp_path).dataset
    assert data_record(sinusoid, instantiate_checked(sinusoid)) == {
        "dataset": "sinusoid", "target": "metalearn.data.sinusoid.Sinusoid", "sources": {},
        "splits": None}  # tasks drawn from a distribution


def test_a_folders_fingerprint_follows_its_files_but_not_its_cache(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "a.png").write_bytes(b"1")
    first = source_record(tmp_path)
    assert first["path"] == str(tmp_path.resolve()) and "fingerprint" in first
    (tmp_path / "cache" / "train.npy").write_bytes(b"decoded")
    assert source_record(tmp_path) == first
    (tmp_path / "a.png").write_bytes(b"12")
    assert source_record(tmp_path)["fingerprint"] != first["fingerprint"]
    assert source_record(tmp_path / "gone") == {"path": str(tmp_path / "gone"), "missing": True}


@pytest.mark.slow
def test_a_run_records_its_launch_its_data_and_its_log_once_its_checks_passed(tmp_path):
    refused = one_line_error(run_script("train.py", *TINY, TOO_MANY_SHOTS,
                                        f"hydra.run.dir={tmp_path}"))
    assert refused.startswith(f"error: {DATA_MISTAKE}")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / ".hydra").exists()

    done = run_script("train.py", *TINY, f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert OmegaConf.load(tmp_path / ".hydra" / "overrides.yaml") == TINY  # Hydra's own: no hydra.*
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").episode.num_tasks == 6
    assert OmegaConf.load(tmp_path / ".hydra" / "hydra.yaml").hydra.runtime.output_dir == str(
        tmp_path)
    record = json.loads((tmp_path / "data_split.json").read_text())
    archives = Path(make_config(LAKE, tmp_path).dataset.archive_dir).resolve()
    assert record["sources"]["archive_dir"]["path"] == str(archives)
    assert len(record["splits"]["test"]) == 659
    log_text = (tmp_path / "train.log").read_text()
    assert refused in log_text  # the refused launch's error, then the run's lines
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in log_text


# Sweeps -------------------------------------------------------------------------------------------
def finished_sweep(sweep_dir: Path) -> None:
    """A sweep directory whose job 0 finished, with its summary."""
    write_fake_job(sweep_dir, 0, {"test_acc": 0.5, "test_acc_ci95": 0.1})
    (sweep_dir / "0" / "checkpoints").mkdir()
    (sweep_dir / "0" / "checkpoints" / "last.ckpt").write_text("weights")
    write_summary(sweep_dir)


def test_a_sweep_into_a_directory_of_finished_jobs_is_refused_before_any_job(tmp_path):
    finished_sweep(tmp_path)
    before = files_of(tmp_path)
    error = one_line_error(run_script("train.py", "-m", *LAKE, "episode.k_shot=30,40",
                                      f"hydra.sweep.dir={tmp_path}"))
    assert error == (f"error: sweep directory {tmp_path} holds 1 finished job; resume the "
                     "sweep with ckpt_path=last (and the same overrides), replace its jobs with "
                     "overwrite=true, or choose another hydra.sweep.dir")
    assert files_of(tmp_path) == before  # summary.md and summary.csv too
    for allowed in ({"ckpt_path": "last"}, {"overwrite": True}):
        check_sweep_dir(tmp_path, OmegaConf.create(allowed))


def test_a_sweeps_summary_keeps_the_finished_jobs_of_earlier_launches(tmp_path):
    ok = {"test_acc": 0.5, "test_acc_ci95": 0.1}
    write_fake_job(tmp_path, 0, ok)  # finished in an earlier launch
    write_fake_job(tmp_path, 1, None, error="an earlier mistake")  # failed in an earlier launch
    write_fake_job(tmp_path, 3, ok)  # finished earlier; resumed now, and stopped by a bug
    an_hour_ago = time.time() - 3600
    for path in tmp_path.rglob("*"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    since = time.time() - 1  # files take the kernel's coarse clock, a little behind
    write_fake_job(tmp_path, 2, None, error="refused now")
    (tmp_path / "3" / ".hydra" / "overrides.yaml").touch()  # its record, rewritten on resuming
    rows = write_summary(tmp_path, since)
    assert [(row["job"], row["status"]) for row in rows] == [
        (0, "ok"), (2, "failed: refused now"), (3, FAILED)]
    assert rows[0]["test_acc"] == 0.5
    with open(tmp_path / "summary.csv", newline="") as file:
        assert [row["job"] for row in csv.DictReader(file)] == ["0", "2", "3"]


@pytest.mark.slow
def test_a_sweep_resumes_with_ckpt_path_last_and_starts_the_jobs_that_hold_no_run(tmp_path):
    sweep = ["-m", *TINY, "episode.k_shot=1,50", f"hydra.sweep.dir={tmp_path}"]
    assert run_script("train.py", *sweep).returncode == 2  # 50 shots do not fit Omniglot
    first = json.loads((tmp_path / "0" / "results.json").read_text())
    summary = (tmp_path / "summary.md").read_bytes()
    assert one_line_error(run_script("train.py", *sweep)).startswith(
        f"error: sweep directory {tmp_path} holds 1 finished job")
    assert (tmp_path / "summary.md").read_bytes() == summary

    resumed = run_script("train.py", *sweep, "ckpt_path=last")
    assert resumed.returncode == 2  # job 1 starts afresh, and fails on its shots again
    with open(tmp_path / "summary.csv", newline="") as file:
        finished, failed = csv.DictReader(file)
    assert finished["status"] == "ok" and float(finished["test_acc"]) == first["test_acc"]
    again = json.loads((tmp_path / "0" / "results.json").read_text())
    assert again["train_steps"] == first["train_steps"]  # a finished job trains no further
    assert failed["status"].startswith("failed: episode.k_shot + episode.query_size = 50 + ")


# Searches -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (["hparams_search=maml_optuna", "dataset=sinusoid"],
     "optimized_metric='best_val_acc' is not a score of regression runs (dataset=sinusoid); "
     "optimise best_val_mse, the best meta-val score with hydra.sweeper.direction=minimize"),
    (["hparams_search=maml_optuna", "dataset=sinusoid", "optimized_metric=best_val_mse"],
     "optimized_metric='best_val_mse' improves as it falls, and hydra.sweeper.direction=maximize "
     "would search for its worst; set hydra.sweeper.direction=minimize"),
    (["hparams_search=protonet_optuna", "optimized_metric=val_acc"],
     "optimized_metric='val_acc' is not a score of classification runs (dataset=omniglot); "
     "optimise best_val_acc, the best meta-val score"),
    (["hparams_search=mann_optuna", "monitor=val/acc_presentation_1"],  # best_ is the monitor's
     "optimized_metric='best_val_acc' is not a score of classification runs (dataset=omniglot); "
     "optimise best_val_acc_presentation_1, the best meta-val score"),
    (["hparams_search=protonet_optuna", "hydra.sweeper.n_trials=0"],
     "hydra.sweeper.n_trials=0 must be a whole number >= 1"),
    (["hparams_search=maml_optuna", "dataset=sinusoid", "optimized_metric=best_val_mse",
      "hydra.sweeper.direction=minimize"], None),
    (["hparams_search=protonet_optuna", "optimized_metric=test_acc"], None),
    (["hparams_search=mann_optuna"], None),
])
def test_a_search_is_checked_before_its_first_trial(overrides, message):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose("train", overrides=overrides, return_hydra_config=True)
        if message is None:
            check_sweep(config, "train")
        else:
            with pytest.raises(UserError) as caught:
                check_sweep(config, "train")
            assert str(caught.value) == message


def test_maml_optuna_on_a_regression_dataset_is_one_line_before_any_trial(tmp_path):
    error = one_line_error(run_script("train.py", "hparams_search=maml_optuna",
                                      "dataset=sinusoid", f"hydra.sweep.dir={tmp_path}"))
    assert error.startswith("error: optimized_metric='best_val_acc' is not a score of regression")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_search_whose_every_trial_failed_ends_in_one_line(tmp_path):
    error = one_line_error(run_script("train.py", "hparams_search=protonet_optuna",
                                      "hydra.sweeper.n_trials=2", *LAKE, TOO_MANY_SHOTS,
                                      f"hydra.sweep.dir={tmp_path}"))
    assert error == (f"error: all 2 trials of the search failed, so it found no best "
                     f"parameters; each trial's error is in {tmp_path / 'summary.md'}")
    with open(tmp_path / "summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 and all(row["status"].startswith(f"failed: {DATA_MISTAKE}")
                                  for row in rows)
