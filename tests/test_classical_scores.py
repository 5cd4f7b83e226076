"""The classical baselines of a run (`baselines`), scored on the run's own test episodes:
metalearn/run/classical_scores.py, GroupedRegression.episode_rows / episode_metrics and the data
module's test_episode_rows; in results.json and results.md of train.py and eval.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from metalearn.data.episodes import TaskBatch, gather
from metalearn.evaluation.classical import GlobalMean
from metalearn.run.build import build
from metalearn.run.classical_scores import baselines_record, configured_baselines
from metalearn.run.evaluate import evaluate
from metalearn.run.training import train
from tests.conftest import make_config
from tests.helpers import user_error

GROUPS, ROWS = 50, 12


def grouped_table(path, seed: int = 0):
    """Groups whose intercepts differ (sd 1.5) around y = 20 + 3 x, noise sd 0.5, in units a
    standardisation has to undo: the case a mixed model is made for."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(GROUPS), ROWS)
    x = rng.normal(size=GROUPS * ROWS)
    y = 20 + 3 * x + rng.normal(0, 1.5, GROUPS)[group] + rng.normal(0, 0.5, GROUPS * ROWS)
    pd.DataFrame({"school": [f"s{g:02d}" for g in group], "x": x, "y": y}).to_csv(path,
                                                                                 index=False)
    return path


def overrides(table, *more):
    return ["dataset=features_regression", f"dataset.path={table}", "dataset.task_column=school",
            "dataset.target_column=y", "algorithm=maml", "episode.k_shot=3",
            "episode.query_size=4", "episode.test_episodes=40", "episode.val_episodes=8",
            "trainer.max_steps=3", "num_epochs=1", "episode.num_tasks=96", *more]


def test_the_baselines_score_exactly_the_learners_test_episodes(tmp_path):
    cfg = make_config(overrides(grouped_table(tmp_path / "t.csv")), tmp_path / "run")
    datamodule, _ = build(cfg)
    rows = datamodule.test_episode_rows()
    batch = TaskBatch.concat(list(datamodule.test_dataloader()))
    test = datamodule.tasks.rows("test")
    assert torch.equal(gather(test.features, rows[:, :3]), batch.support_x)
    assert torch.equal(gather(test.targets, rows[:, :3]), batch.support_y)
    assert torch.equal(gather(test.features, rows[:, 3:]), batch.query_x)
    assert torch.equal(gather(test.targets, rows[:, 3:]), batch.query_y)


def test_a_baseline_is_scored_in_the_targets_own_units_and_paired_with_the_model(tmp_path):
    table = grouped_table(tmp_path / "t.csv")
    cfg = make_config(overrides(table), tmp_path / "run")
    datamodule, _ = build(cfg)
    tasks, rows = datamodule.tasks, datamodule.test_episode_rows()
    # by hand: the raw table's mean over the meta-train schools, against the query rows' targets
    raw = pd.read_csv(table)
    train_mean = raw[raw["school"].isin(tasks.split_record()["train"])]["y"].mean()
    query = gather(tasks.rows("test").targets, rows[:, 3:]).squeeze(-1).double()
    query = query * tasks.target_scale + tasks.target_offset
    assert query.flatten().tolist() == pytest.approx(
        [raw["y"][raw["y"].sub(value).abs().idxmin()] for value in query.flatten().tolist()],
        abs=1e-4)  # the targets back in the table's units are the table's values
    by_hand = (query - train_mean).square().mean(1)
    model_mse = torch.linspace(0.5, 1.5, len(rows)).double()
    record = baselines_record([GlobalMean()], datamodule, model_mse)["global_mean"]
    assert record["test_mse"] == pytest.approx(by_hand.mean().item(), rel=1e-5)
    assert record["test_mae"] == pytest.approx((query - train_mean).abs().mean().item(), rel=1e-5)
    paired = record["model_minus_baseline_mse"]
    assert paired["difference"] == pytest.approx((model_mse - by_hand).mean().item(), rel=1e-5)
    assert paired["difference_ci95"] < record["test_mse_ci95"] * 2


def test_train_and_eval_report_the_baselines_beside_the_model(tmp_path):
    table = grouped_table(tmp_path / "t.csv")
    record = train(make_config(overrides(table), tmp_path / "run"))
    assert set(record["baselines"]) == {"global_mean", "support_mean", "pooled", "group_ols",
                                        "group_ridge", "mixed_model"}
    scores = {name: entry["test_mse"] for name, entry in record["baselines"].items()}
    assert record["best_baseline"] == min(scores, key=scores.get)
    mixed, mean = record["baselines"]["mixed_model"], record["baselines"]["global_mean"]
    # intercepts of sd 1.5 against noise of 0.5: three rows of a school say much about it
    assert mixed["test_mse"] + 2 * mixed["test_mse_ci95"] < mean["test_mse"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["baselines"]["mixed_model"]["test_mse"] == mixed["test_mse"]
    assert "## Classical baselines on the same episodes (3-shot)" in (
        tmp_path / "run" / "results.md").read_text()

    eval_overrides = [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                      "eval.shots=[1,3]"]
    evaluated = evaluate(make_config(eval_overrides, tmp_path / "eval", config_name="eval"),
                         eval_overrides)
    three = next(shot for shot in evaluated["by_shot"] if shot["k_shot"] == 3)
    # the same test episodes at the same shot: the same baseline scores
    assert three["baselines"]["mixed_model"]["test_mse"] == pytest.approx(mixed["test_mse"])
    one = next(shot for shot in evaluated["by_shot"] if shot["k_shot"] == 1)
    assert one["baselines"]["mixed_model"]["test_mse"] > mixed["test_mse"]  # less to adapt from


def test_baseline_settings_are_checked_before_training(tmp_path):
    table = grouped_table(tmp_path / "t.csv")

    def refusal(*more):
        cfg = make_config(overrides(table, *more), tmp_path / "run")
        return user_error(configured_baselines, cfg, build(cfg)[0].tasks)

    assert refusal("+baselines.mf_fold_in={}").startswith(
        "baselines.mf_fold_in predicts from the items rated, which only dataset=movielens has")
    assert refusal("baselines.mixed_model.random_slopes=[z]") == (
        "baselines.mixed_model.random_slopes: z is not a feature column; the feature columns "
        "are: x")
    cfg = make_config(["dataset=sinusoid", "algorithm=maml", "+baselines.global_mean={}"],
                      tmp_path / "sine")
    assert user_error(configured_baselines, cfg, build(cfg)[0].tasks).startswith(
        "baselines (global_mean) are scored on regression tasks that are groups of rows; "
        "dataset=sinusoid has none")


def test_a_linear_baseline_refuses_embedded_category_codes(tmp_path):
    frame = pd.read_csv(grouped_table(tmp_path / "t.csv"))
    frame["kind"] = np.where(frame["x"] > 0, "a", "b")
    frame.to_csv(tmp_path / "k.csv", index=False)
    cfg = make_config(overrides(tmp_path / "k.csv", "dataset.categorical_encoding=embedding"),
                      tmp_path / "run")
    tasks = build(cfg)[0].tasks
    assert user_error(configured_baselines, cfg, tasks).startswith(
        "baselines.pooled is linear in the features, and dataset.categorical_encoding=embedding")
