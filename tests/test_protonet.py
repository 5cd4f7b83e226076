"""Prototypical Networks learn on real Omniglot, and the run and eval.py leave what they promise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from metalearn.algorithms.protonet import ProtoNet
from metalearn.evaluation.plots import csv_rows
from metalearn.models.backbones import Conv4
from tests.budgets import BUDGETS
from tests.conftest import ROOT

RESULT_KEYS = {"algorithm", "dataset", "n_way", "k_shot", "query_size", "test_episodes",
               "test_acc", "test_acc_ci95"}


def test_prototypes_are_class_means():
    features = torch.tensor([[0.0, 2.0], [4.0, 0.0], [2.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([1, 0, 1, 0])
    expected = torch.tensor([[2.5, 0.5], [1.0, 2.0]])
    model = ProtoNet(Conv4((1, 28, 28)))
    model.process_support_features(features, labels)
    assert torch.allclose(model.prototypes, expected)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_scores_rank_the_nearest_prototype_first(distance):
    model = ProtoNet(Conv4((1, 28, 28)), distance=distance)
    model.process_support_features(torch.eye(3) * 5, torch.tensor([0, 1, 2]))
    queries = torch.tensor([[4.0, 0.5, 0.0], [0.0, 0.2, 6.0]])
    assert model.score_queries(queries).argmax(1).tolist() == [0, 2]


def test_embedding_dim_projects_the_features():
    model = ProtoNet(Conv4((1, 28, 28)), embedding_dim=16)
    assert model.embed(torch.rand(3, 1, 28, 28)).shape == (3, 16)


@pytest.mark.slow
def test_protonet_learns_omniglot_5way_1shot(trained_protonet):
    record, _ = trained_protonet
    assert RESULT_KEYS <= record.keys()
    assert (record["algorithm"], record["dataset"], record["split"]) == ("protonet", "omniglot", "lake")
    assert (record["n_way"], record["k_shot"], record["test_episodes"]) == (5, 1, 600)
    BUDGETS["protonet (lake)"].check(record)
    assert 0 < record["test_acc_ci95"] < 0.03


@pytest.mark.slow
def test_run_directory_holds_config_logs_checkpoints_and_results(trained_protonet):
    record, run_dir = trained_protonet
    assert "_target_: metalearn.algorithms.protonet.ProtoNet" in (run_dir / "config.yaml").read_text()
    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2  # last + best by val/acc
    rows = csv_rows(run_dir / "csv" / "metrics.csv")
    assert any("train/loss" in row for row in rows)
    validations = [row["val/acc"] for row in rows if "val/acc" in row]
    # the tested checkpoint is the best by meta-val accuracy, as logged
    assert record["best_val_acc"] == pytest.approx(max(validations))
    assert record["tested_checkpoint"].startswith("checkpoints/epoch_")  # relative to the run


@pytest.mark.slow
def test_eval_py_reproduces_the_test_score_and_evaluates_several_shots(trained_protonet, tmp_path):
    record, run_dir = trained_protonet

    def evaluate(*overrides: str) -> dict:
        result = subprocess.run(
            [sys.executable, "eval.py", f"ckpt_path={run_dir / record['tested_checkpoint']}",
             f"hydra.run.dir={tmp_path}", *overrides],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads((tmp_path / "results.json").read_text())

    # Same checkpoint, same 600 episodes: the same number as at the end of training.
    again = evaluate()
    assert again["test_acc"] == pytest.approx(record["test_acc"], abs=1e-6)
    assert RESULT_KEYS <= again.keys()

    several = evaluate("eval.shots=[1,5]", "episode.test_episodes=200")
    one, five = several["by_shot"]
    assert (one["k_shot"], five["k_shot"], five["test_episodes"]) == (1, 5, 200)
    assert five["test_acc"] > one["test_acc"] + 0.03


def test_eval_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, bogus)
    result = subprocess.run([sys.executable, "eval.py", f"ckpt_path={bogus}",
                             f"hydra.run.dir={tmp_path}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "was not written by metalearn's train.py" in result.stderr
    assert "Traceback" not in result.stderr
