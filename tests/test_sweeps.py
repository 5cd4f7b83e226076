"""Multirun sweeps: the summary of a sweep's jobs, Optuna searches, and the joblib and submitit
launchers. The training runs are tiny: they check the plumbing, not what is learned."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from metalearn import aggregate_seeds
from metalearn.errors import UserError
from metalearn.run.compose import CONFIG_DIR
from metalearn.run.sweeps import FAILED, SweepSummary, optimized_value, write_summary
from tests.conftest import ROOT

# A few seconds of meta-training per job on 2 CPU cores.
TINY = ["dataset.split=lake", "dataset.rotations=false", "episode.num_tasks=8", "num_epochs=1",
        "episode.val_episodes=4", "episode.test_episodes=8", "backbone.hidden_channels=8",
        "episode.meta_batch_size=2"]


def run_multirun(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python train.py -m <TINY> <overrides>` with its sweep dir at sweep_dir."""
    return subprocess.run(
        [sys.executable, "train.py", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=300, check=False)


def multirun(sweep_dir: Path, *overrides: str) -> str:
    """Runs a multirun that must succeed; returns its output."""
    done = run_multirun(sweep_dir, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep (named by job number), in job order."""
    return sorted((path for path in sweep_dir.iterdir() if path.name.isdigit()),
                  key=lambda path: int(path.name))


def job_overrides(job_dir: Path) -> dict[str, str]:
    """The task overrides of a job, as {key: value}."""
    overrides = OmegaConf.load(job_dir / ".hydra/overrides.yaml")
    return dict(override.split("=", 1) for override in overrides)


def results(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())


def summary_csv(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv", newline="") as file:
        return list(csv.DictReader(file))


def summary_md(sweep_dir: Path) -> list[dict[str, str]]:
    """The rows of summary.md's table, as {column: cell} (a cell may hold an escaped \\|)."""
    header, separator, *rows = (sweep_dir / "summary.md").read_text().splitlines()
    assert separator.startswith("|---|")

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))]

    return [dict(zip(cells(header), cells(row))) for row in rows]


def compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


# The summary ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_grid_sweep_runs_every_job_in_parallel_and_summarises_it(tmp_path):
    """The issue's grid, on the joblib launcher with 2 workers (one sweep checks both)."""
    sweep_dir = tmp_path / "sweep"
    output = multirun(sweep_dir, "algorithm=maml,protonet", "episode.k_shot=1,5",
                      "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert "Joblib.Parallel(n_jobs=2," in output

    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 4
    rows, md_rows = summary_csv(sweep_dir), summary_md(sweep_dir)
    assert len(rows) == len(md_rows) == 4
    grid = set()
    for job, row, md_row in zip(jobs, rows, md_rows):
        chosen, record = job_overrides(job), results(job)
        assert record["algorithm"] == chosen["algorithm"]
        assert record["k_shot"] == int(chosen["episode.k_shot"])
        grid.add((record["algorithm"], record["k_shot"]))

        assert row["job"] == md_row["job"] == job.name
        assert row["dir"] == md_row["dir"] == job.name
        assert row["overrides"] == " ".join(f"{key}={value}" for key, value in chosen.items())
        assert row["status"] == md_row["status"] == "ok"
        for key in ("test_acc", "test_acc_ci95", "best_val_acc"):
            assert float(row[key]) == record[key]
            assert md_row[key] == f"{record[key]:.4f}"
    assert grid == {("maml", 1), ("maml", 5), ("protonet", 1), ("protonet", 5)}


def write_fake_job(sweep_dir: Path, num: int, record: dict | None, error: str | None = None):
    """A job dir as Hydra leaves it; `record` is its results.json (None: the job failed), `error`
    the user error it failed on."""
    job_dir = sweep_dir / str(num)
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"job": {"num": num}}}, job_dir / ".hydra/hydra.yaml")
    OmegaConf.save([f"episode.k_shot={num}", "algorithm=maml"], job_dir / ".hydra/overrides.yaml")
    if record is not None:
        (job_dir / "results.json").write_text(json.dumps(record))
    if error is not None:
        (job_dir / "error.txt").write_text(error + "\n")


def test_summary_lists_failed_jobs_and_orders_jobs_by_number(tmp_path, capsys):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)},
                                         "overrides": {"task": ["episode.k_shot=0,2,3,10"],
                                                       "hydra": []}}})
    summary = SweepSummary()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):  # as in an app
        summary.on_multirun_start(config, config_name="train")
    ok = {"test_acc": 0.5, "test_acc_ci95": 0.25, "best_val_acc": 0.75, "train_steps": 4}
    write_fake_job(tmp_path, 10, ok)
    write_fake_job(tmp_path, 2, None)
    write_fake_job(tmp_path, 3, None, error="x|y is wrong")
    write_fake_job(tmp_path, 0, ok)
    with pytest.raises(SystemExit) as exited:
        summary.on_multirun_end(config)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"job 2 (episode.k_shot=2 algorithm=maml): {FAILED}",
        "job 3 (episode.k_shot=3 algorithm=maml): failed: x|y is wrong",
        f"error: 2 of 4 jobs failed; see {tmp_path / 'summary.md'}"]

    rows = summary_csv(tmp_path)
    assert [row["job"] for row in rows] == ["0", "2", "3", "10"]  # numeric order: not "10" < "2"
    assert list(rows[0]) == ["job", "overrides", "status", "test_acc", "test_acc_ci95",
                             "best_val_acc", "dir"]
    assert rows[0]["overrides"] == "episode.k_shot=0 algorithm=maml"
    assert rows[0]["status"] == "ok" and float(rows[0]["best_val_acc"]) == 0.75
    assert rows[1]["status"] == FAILED
    assert rows[1]["test_acc"] == rows[1]["best_val_acc"] == ""
    assert rows[2]["status"] == "failed: x|y is wrong"
    md_rows = summary_md(tmp_path)
    assert [row["status"] for row in md_rows] == ["ok", FAILED, r"failed: x\|y is wrong", "ok"]
    assert md_rows[3]["test_acc"] == "0.5000" and md_rows[3]["dir"] == "10"


def test_a_job_that_fails_on_a_user_error_does_not_stop_the_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = run_multirun(sweep_dir, "episode.k_shot=30,1")  # job 0 asks for more than a class has
    assert done.returncode == 2
    mistake = "episode.k_shot + episode.query_size = 30 + 15 = 45 is more than the 20 examples"
    lines = done.stderr.strip().splitlines()
    assert any(line.startswith(f"error: {mistake}") for line in lines)  # when job 0 failed
    assert lines[-2].startswith("job 0 (") and f"k_shot=30): failed: {mistake}" in lines[-2]
    assert lines[-1] == f"error: 1 of 2 jobs failed; see {sweep_dir / 'summary.md'}"

    failed, ok = summary_csv(sweep_dir)
    assert failed["status"].startswith(f"failed: {mistake}") and failed["test_acc"] == ""
    assert ok["status"] == "ok" and float(ok["test_acc"]) == results(sweep_dir / "1")["test_acc"]
    assert summary_md(sweep_dir)[0]["status"].startswith(f"failed: {mistake}")


def test_a_sweep_stopped_by_a_bug_still_gets_its_summary(tmp_path):
    # Hydra never calls on_multirun_end when a job raises; the summary is written at exit
    sweep_dir = tmp_path / "sweep"
    done = run_multirun(sweep_dir, "episode.k_shot=1", "+callbacks.bug._target_=no.such.Callback")
    assert done.returncode == 1
    assert "Error executing job with overrides" in done.stderr
    [row] = summary_csv(sweep_dir)
    assert row["status"] == FAILED and "episode.k_shot=1" in row["overrides"]


# Aggregation over training seeds ----------------------------------------------------------------
T_975_1DF = 12.7062047  # the 97.5% quantile of Student's t with 1 degree of freedom


def write_seed_job(sweep_dir: Path, num: int, overrides: list[str], record: dict | None) -> None:
    """A job dir as Hydra leaves it, with these overrides; `record` is its results.json (None:
    the job failed)."""
    job_dir = sweep_dir / str(num)
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"job": {"num": num}}}, job_dir / ".hydra/hydra.yaml")
    OmegaConf.save(overrides, job_dir / ".hydra/overrides.yaml")
    if record is not None:
        (job_dir / "results.json").write_text(json.dumps(record))


def seed_table(sweep_dir: Path) -> list[dict[str, str]]:
    """The rows of summary.md's second table, the one over seeds, as {column: cell}."""
    section = (sweep_dir / "summary.md").read_text().split("## Over seeds\n")[1]
    header, separator, *rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in (header, *rows)]
    return [dict(zip(cells[0], row)) for row in cells[1:]]


def test_a_sweep_over_seeds_is_summarised_per_configuration(tmp_path):
    """Two settings x two seeds, and a third seed of one setting that failed."""
    jobs = [(["seed=1", "episode.k_shot=1", "algorithm=maml"], 0.90, 0.02),
            (["seed=1", "episode.k_shot=5", "algorithm=maml"], 0.95, 0.01),
            (["seed=2", "episode.k_shot=1", "algorithm=maml"], 0.80, 0.03),
            (["seed=2", "episode.k_shot=5", "algorithm=maml"], 0.97, 0.02),
            (["seed=3", "episode.k_shot=5", "algorithm=maml"], None, None)]
    for num, (overrides, acc, ci95) in enumerate(jobs):
        write_seed_job(tmp_path, num, overrides, None if acc is None else
                       {"test_acc": acc, "test_acc_ci95": ci95, "best_val_acc": acc})
    rows = write_summary(tmp_path)
    assert len(rows) == len(summary_csv(tmp_path)) == 5  # the per-job table is kept
    # each configuration is named by what sets it apart: algorithm=maml, which all share, is not
    one, five = expected = [
        {"configuration": "episode.k_shot=1", "seeds": 2, "failed": 0, "test_acc": 0.85,
         "test_acc_seed_ci95": T_975_1DF * 0.1 / 2, "test_acc_episode_ci95": 0.025},
        {"configuration": "episode.k_shot=5", "seeds": 2, "failed": 1, "test_acc": 0.96,
         "test_acc_seed_ci95": T_975_1DF * 0.02 / 2, "test_acc_episode_ci95": 0.015}]
    with open(tmp_path / "summary_seeds.csv", newline="") as file:
        written = list(csv.DictReader(file))
    assert list(written[0]) == list(one)
    for row, hand in zip(written, expected):
        assert row["configuration"] == hand["configuration"]
        assert (int(row["seeds"]), int(row["failed"])) == (hand["seeds"], hand["failed"])
        for key in ("test_acc", "test_acc_seed_ci95", "test_acc_episode_ci95"):
            assert float(row[key]) == pytest.approx(hand[key], rel=1e-7)
    table = seed_table(tmp_path)
    assert table[0] == {"configuration": "episode.k_shot=1", "seeds": "2", "failed": "0",
                        "test_acc": "0.8500", "test_acc_seed_ci95": "0.6353",
                        "test_acc_episode_ci95": "0.0250"}
    assert table[1]["test_acc_seed_ci95"] == "0.1271" and table[1]["failed"] == "1"

    # the API: from the sweep directory, and from results records
    assert aggregate_seeds(tmp_path) == [pytest.approx(row) for row in expected]
    records = [{"algorithm": "maml", "k_shot": 1, "seed": seed, "test_acc": acc,
                "test_acc_ci95": 0.02} for seed, acc in ((1, 0.90), (2, 0.80), (3, 0.70))]
    [aggregated] = aggregate_seeds(records)
    assert aggregated["configuration"] == "algorithm=maml k_shot=1"
    assert aggregated["seeds"] == 3 and aggregated["test_acc"] == pytest.approx(0.8)
    assert aggregated["test_acc_seed_ci95"] == pytest.approx(4.30265273 * 0.1 / 3 ** 0.5)
    with pytest.raises(UserError, match="is not a sweep directory"):
        aggregate_seeds(tmp_path / "missing")


def test_one_seed_has_no_spread_and_a_sweep_without_seeds_no_seed_table(tmp_path):
    write_seed_job(tmp_path / "seeds", 0, ["seed=1", "episode.k_shot=1"],
                   {"test_mse": 0.5, "test_mse_ci95": 0.1})
    write_summary(tmp_path / "seeds")
    [row] = seed_table(tmp_path / "seeds")
    assert row["test_mse_seed_ci95"] == "n/a" and row["seeds"] == "1"
    write_seed_job(tmp_path / "plain", 0, ["episode.k_shot=1"], {"test_acc": 0.5,
                                                                  "test_acc_ci95": 0.1})
    write_summary(tmp_path / "plain")
    assert "Over seeds" not in (tmp_path / "plain" / "summary.md").read_text()
    assert not (tmp_path / "plain" / "summary_seeds.csv").exists()


@pytest.mark.slow
def test_a_multirun_over_seeds_aggregates_each_setting(tmp_path):
    sweep_dir = tmp_path / "sweep"
    multirun(sweep_dir, "seed=1,2", "episode.k_shot=1,2")
    # configuration: what sets the job apart from the others but its seed (the shot); the settings
    # all jobs share are left out of its name
    by_setting: dict[str, list[dict]] = {}
    for job in job_dirs(sweep_dir):
        overrides = OmegaConf.load(job / ".hydra/overrides.yaml")
        setting = next(override for override in overrides if override.startswith("episode.k_shot="))
        by_setting.setdefault(setting, []).append(results(job))
    assert len(by_setting) == 2 and all(len(runs) == 2 for runs in by_setting.values())
    with open(sweep_dir / "summary_seeds.csv", newline="") as file:
        table = {row["configuration"]: row for row in csv.DictReader(file)}
    assert table.keys() == by_setting.keys()
    assert {row["configuration"] for row in seed_table(sweep_dir)} == table.keys()
    for setting, (a, b) in by_setting.items():
        assert (a["seed"], b["seed"]) == (1, 2) and a["test_acc"] != b["test_acc"]
        row = table[setting]
        assert row["seeds"] == "2"
        assert float(row["test_acc"]) == pytest.approx((a["test_acc"] + b["test_acc"]) / 2)
        spread = T_975_1DF * abs(a["test_acc"] - b["test_acc"]) / 2
        assert float(row["test_acc_seed_ci95"]) == pytest.approx(spread, rel=1e-6)
        assert float(row["test_acc_episode_ci95"]) == pytest.approx(
            (a["test_acc_ci95"] + b["test_acc_ci95"]) / 2)


# Hyperparameter search --------------------------------------------------------------------------
@pytest.mark.parametrize("search,algorithm", [
    ("protonet_optuna", "protonet"), ("maml_optuna", "maml"), ("metasgd_optuna", "metasgd"),
    ("mann_optuna", "mann"),
])
def test_search_configs_search_real_keys_of_their_algorithm(search, algorithm):
    cfg = compose_with_hydra([f"hparams_search={search}"])
    assert cfg.algorithm._target_.split(".")[-2] == algorithm
    assert cfg.optimized_metric == "best_val_acc"
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.hydra.mode.name == "MULTIRUN"
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"{search} searches {key}, not in the config"


def test_objective_is_the_optimized_metric_of_the_record():
    record = {"test_acc": 0.5, "best_val_acc": 0.75, "k_shot": 1}
    assert optimized_value(OmegaConf.create({"optimized_metric": "best_val_acc"}), record) == 0.75
    assert optimized_value(OmegaConf.create({"optimized_metric": None}), record) is None
    with pytest.raises(UserError) as caught:
        optimized_value(OmegaConf.create({"optimized_metric": "val_acc"}), record)
    assert str(caught.value) == ("optimized_metric='val_acc' is not in this run's results; "
                                 "use one of: test_acc, best_val_acc")


@pytest.mark.slow
def test_optuna_search_reports_the_best_trial_and_a_stored_study_goes_on(tmp_path):
    study = ["hparams_search=protonet_optuna", f"hydra.sweeper.storage=sqlite:///{tmp_path}/s.db",
             "hydra.sweeper.study_name=protonet"]
    sweep_dir = tmp_path / "sweep"
    multirun(sweep_dir, *study, "hydra.sweeper.n_trials=2")

    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2
    scores = [results(job)["best_val_acc"] for job in jobs]
    found = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert found.best_value == max(scores)
    best_trial = job_overrides(jobs[scores.index(max(scores))])
    for key, value in found.best_params.items():
        assert best_trial[key] == str(value)
    assert len(summary_csv(sweep_dir)) == 2

    # A second search adds its trial to the stored study. This one fails on a user error
    # (5-shot tasks of 20 queries per class exceed Omniglot's 20 examples): the study records a
    # failed trial, and the best of the study is still the first search's.
    again = tmp_path / "again"
    done = run_multirun(again, *study, "hydra.sweeper.n_trials=1", "episode.query_size=20",
                        "episode.k_shot=5")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 jobs failed")
    trials = optuna.load_study(study_name="protonet", storage=f"sqlite:///{tmp_path}/s.db").trials
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert OmegaConf.load(again / "optimization_results.yaml") == found


# Launchers --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_submitit_local_runs_each_job_as_a_submitit_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    multirun(sweep_dir, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=3",
             "episode.k_shot=1,5")

    assert [results(job)["k_shot"] for job in job_dirs(sweep_dir)] == [1, 5]
    # submitit keeps one folder per job with the job's own output and pickled result
    submitted = [folder for folder in (sweep_dir / ".submitit").iterdir() if folder.name.isdigit()]
    assert len(submitted) == 2
    for folder in submitted:
        assert list(folder.glob("*_result.pkl"))
        assert "Results: " in next(folder.glob("*_log.out")).read_text()


def test_slurm_launcher_config_composes():
    launcher = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.nodes=2"]).hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert launcher.nodes == 2
    assert launcher.timeout_min == 240 and launcher.gpus_per_node == 1
    assert launcher.submitit_folder.endswith("/.submitit/%j")
