"""Meta-reinforcement learning through the run spine: train.py's records (return by adaptation
steps with intervals over tasks, results.md, the plot, the data record), exact resume, eval.py and
compare.py on the same held-out tasks and rollout seeds, the one-line refusals of bad settings,
and learning on 2D navigation against the return measured for its budget."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from metalearn.evaluation.statistics import Z_95
from metalearn.run.build import build
from metalearn.run.compare import compare
from metalearn.run.evaluate import evaluate
from metalearn.run.training import train
from tests.budgets import BUDGETS
from tests.conftest import ROOT, make_config
from tests.helpers import user_error

pytest.importorskip("gymnasium")

#: a few seconds: 2 tasks x 2 rollouts of 10 steps per outer step, 2 steps an epoch
TINY = ["algorithm=maml_rl", "env=navigation2d", "env.horizon=10", "episode.meta_batch_size=2",
        "algorithm.episodes_per_task=2", "episode.num_tasks=4", "num_epochs=1",
        "episode.val_tasks=2", "episode.test_tasks=3", "algorithm.test_inner_steps=2",
        "seed=5"]


def records(path) -> dict:
    return json.loads((path / "results.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("maml_rl")
    return train(make_config(TINY, run_dir)), run_dir


def test_a_run_reports_the_return_before_and_after_each_adaptation_step(tiny_run):
    record, run_dir = tiny_run
    per_task = torch.tensor(record["per_task_returns"], dtype=torch.float64)
    assert per_task.shape == (3, 3)  # 3 held-out tasks; before, after 1 and after 2 steps
    assert list(record["return_by_steps"]) == ["0", "1", "2"]
    for step, entry in record["return_by_steps"].items():
        column = per_task[:, int(step)]
        assert entry["mean"] == pytest.approx(column.mean().item())
        assert entry["ci95"] == pytest.approx(Z_95 * column.std().item() / math.sqrt(3))
    assert record["test_return"] == record["return_by_steps"]["2"]["mean"]
    assert record["env"] == "navigation2d" and record["horizon"] == 10
    assert all(-10 * 0.75 <= value <= 0 for value in per_task.flatten().tolist())  # -distance
    assert record["warnings"][0].startswith("only 3 held-out tasks")
    table = (run_dir / "results.md").read_text()
    assert table.startswith("# maml_rl on navigation2d, 3 held-out tasks, 2 rollouts each")
    assert "| 2 | " in table
    assert (run_dir / "plots" / "return_by_steps.png").stat().st_size > 0
    assert (run_dir / "plots" / "learning_curves.png").stat().st_size > 0
    data = json.loads((run_dir / "data_split.json").read_text())
    assert data["dataset"] == "navigation2d" and data["splits"] is None


def test_the_same_seed_gives_the_same_returns(tiny_run, tmp_path):
    record, _ = tiny_run
    again = train(make_config(TINY, tmp_path))
    assert again["per_task_returns"] == record["per_task_returns"]


def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path):
    two_epochs = [*TINY, "num_epochs=2"]
    whole = train(make_config(two_epochs, tmp_path / "whole"))
    train(make_config(TINY, tmp_path / "split"))  # the first epoch, then resumed for the second
    resumed = train(make_config([*two_epochs, "ckpt_path=last"], tmp_path / "split"))
    for key in ("per_task_returns", "best_val_return", "train_steps"):
        assert resumed[key] == whole[key], key
    weights = [torch.load(path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for path in (tmp_path / "whole", tmp_path / "split")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_eval_and_compare_score_checkpoints_on_the_same_tasks_and_rollouts(tiny_run, tmp_path):
    record, run_dir = tiny_run
    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    overrides = [f"ckpt_path={checkpoint}", "eval.inner_steps=[0,1,2,3]"]
    evaluated = evaluate(make_config(overrides, tmp_path / "eval", "eval"), overrides)
    assert list(evaluated["return_by_steps"]) == ["0", "1", "2", "3"]
    overrides = [f"ckpt_path={checkpoint}", "+episode.test_tasks=4"]  # not a few-shot key
    more = evaluate(make_config(overrides, tmp_path / "more", "eval"), overrides)
    assert len(more["per_task_returns"]) == more["test_tasks"] == 4
    tested = record["tested_checkpoint"]
    if tested and tested.endswith("last.ckpt"):  # the same weights: the same returns
        assert [row[:3] for row in evaluated["per_task_returns"]] == record["per_task_returns"]

    random_dir = tmp_path / "random"
    train(make_config([*TINY, "algorithm=random_rl"], random_dir))
    paths = [checkpoint, str(random_dir / "checkpoints" / "last.ckpt")]
    overrides = [f"ckpt_paths=[{','.join(paths)}]"]
    comparison = compare(make_config(overrides, tmp_path / "compare", "compare"), overrides)
    first, second = comparison["checkpoints"]
    assert (first["algorithm"], second["algorithm"]) == ("maml_rl", "random_rl")
    pair = comparison["pairs"][0]
    assert pair["difference"] == pytest.approx(first["test_return"] - second["test_return"])
    assert (tmp_path / "compare" / "comparison.md").read_text().startswith(
        "# Comparison on the same held-out tasks: navigation2d")


def test_a_seed_sweep_summarises_the_return_over_seeds(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "-m", *TINY, "seed=1,2",
                           f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    returns = [json.loads((tmp_path / str(job) / "results.json").read_text())["test_return"]
               for job in (0, 1)]
    assert [float(row["test_return"]) for row in rows] == returns
    by_seed = (tmp_path / "summary.md").read_text()
    assert f"{sum(returns) / 2:.4f}" in by_seed  # the mean over the two seeds


def refusal(overrides: list[str], tmp_path) -> str:
    return user_error(lambda: build(make_config(overrides, tmp_path)))


@pytest.mark.parametrize("overrides, expected", [
    (["env.name=nowhere"], "env.name='nowhere' is not"),
    (["env.horizon=0"], "env.horizon=0"),
    (["algorithm.episodes_per_task=0"], "algorithm.episodes_per_task=0"),
    (["episode.meta_batch_size=0"], "episode.meta_batch_size=0"),
    (["+env.options.goal_rangee=1"], "goal_rangee"),
    (["backbone.distribution=categorical"], "backbone.distribution=categorical"),
    (["dataset=omniglot"], "algorithm=maml_rl learns from environments"),
    (["env=cartpole_varied", "backbone.distribution=gaussian"], "backbone.distribution=gaussian"),
])
def test_bad_settings_are_refused_in_one_line(overrides, expected, tmp_path):
    assert expected in refusal([*TINY, *overrides], tmp_path)


def test_a_few_shot_algorithm_is_refused_an_env(tmp_path):
    assert refusal(["algorithm=protonet", "env=navigation2d"], tmp_path).startswith(
        "env=navigation2d is a distribution of environments, which algorithm=protonet does not "
        "learn from")


def test_a_user_environment_without_the_task_protocol_is_refused_naming_the_method(tmp_path):
    message = refusal([*TINY, "env=user", "env.name=gymnasium.envs.classic_control:CartPoleEnv"],
                      tmp_path)
    assert "sample_tasks" in message


def test_train_py_exits_with_status_2_and_one_line(tmp_path):
    done = subprocess.run([sys.executable, "train.py", *TINY, "env.horizon=0",
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "env.horizon=0" in done.stderr


@pytest.mark.slow
def test_maml_rl_learns_to_reach_new_goals_in_one_step(tmp_path):
    budget = BUDGETS["maml_rl (navigation2d)"]
    record = train(make_config(budget.overrides, tmp_path))
    budget.check(record)
    gain = record["adaptation_gain"]  # adapting to a new goal helps, beyond the interval
    assert gain["difference"] - gain["difference_ci95"] > 0, gain
