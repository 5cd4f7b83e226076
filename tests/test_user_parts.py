"""A user's own algorithm, outside the package (a module on the Python path and its config in a
directory of the user's, found through `hydra.searchpath=[file://DIR]`), runs from every face:
train.py and eval.py, a multirun beside a packaged algorithm, compare.py's comparison,
meta_learning.py and the Python API (docs/configuration.md, "Your own parts outside the package")."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metalearn import MetaLearner, TaskSampler, compare_checkpoints, evaluate_few_shot
from metalearn.cli.flags import build_parser
from metalearn.cli.flags import main as meta_learning_main
from metalearn.errors import UserError
from metalearn.paths import project_root

ROOT = Path(project_root())
# the whole of a user's nearest-neighbour method: the base class does the rest
NEAREST = '''"""Nearest neighbour in the embedding: a query scores each class by its closest support example
(minus the squared euclidean distance), so that with one shot it is Prototypical Networks."""

from torch import Tensor

from metalearn.algorithms.metric import MetricModule


class NearestNeighbour(MetricModule):
    def score_queries(self, query_features: Tensor) -> Tensor:
        differences = query_features.unsqueeze(1) - self.support_features.unsqueeze(0)
        scores = -differences.pow(2).flatten(2).sum(-1)  # [Q, S]
        other_classes = self.support_one_hot.T == 0  # [N, S]
        return scores.unsqueeze(1).masked_fill(other_classes, float("-inf")).amax(-1)  # [Q, N]
'''
NEAREST_CONFIG = """# Nearest neighbour in the embedding: my_methods/nearest.py
_target_: my_methods.nearest.NearestNeighbour
outer_lr: 0.001
"""
LAKE = ["dataset.split=lake", "dataset.rotations=false"]
SMALL = [*LAKE, "episode.val_episodes=4", "episode.test_episodes=8", "backbone.hidden_channels=8"]
TINY = [*SMALL, "episode.num_tasks=4", "episode.meta_batch_size=2", "num_epochs=1"]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """The user's directory: the package my_methods and configs/algorithm/nearest.yaml."""
    root = tmp_path_factory.mktemp("user")
    (root / "my_methods").mkdir()
    (root / "my_methods" / "__init__.py").write_text("")
    (root / "my_methods" / "nearest.py").write_text(NEAREST)
    (root / "configs" / "algorithm").mkdir(parents=True)
    (root / "configs" / "algorithm" / "nearest.yaml").write_text(NEAREST_CONFIG)
    return root


@pytest.fixture
def importable(user_dir, monkeypatch) -> Path:
    """The user's package on this process's Python path."""
    monkeypatch.syspath_prepend(str(user_dir))
    return user_dir


def search_path(user_dir: Path) -> str:
    return f"hydra.searchpath=[file://{user_dir / 'configs'}]"


def run_script(user_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """An entry point with the user's package on its Python path; it must succeed."""
    path = os.pathsep.join(filter(None, [str(user_dir), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1"),
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_train_py_trains_it_and_eval_py_reproduces_its_score(user_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_script(user_dir, "train.py", "algorithm=nearest", search_path(user_dir), *TINY,
               f"hydra.run.dir={run_dir}")
    record = json.loads((run_dir / "results.json").read_text())
    assert record["algorithm"] == "nearest" and 0 <= record["test_acc"] <= 1
    # the checkpoint holds the config: eval.py needs only the user's module to be importable
    run_script(user_dir, "eval.py", f"ckpt_path={run_dir / record['tested_checkpoint']}",
               f"hydra.run.dir={tmp_path / 'eval'}")
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["test_acc"] == record["test_acc"]


@pytest.mark.slow
def test_a_sweep_runs_it_beside_a_packaged_algorithm_and_compare_scores_both(importable,
                                                                            tmp_path):
    run_script(importable, "train.py", "-m", "algorithm=nearest,protonet",
               search_path(importable), *TINY, f"hydra.sweep.dir={tmp_path}")
    with open(tmp_path / "summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["overrides"].split()[0] for row in rows] == ["algorithm=nearest",
                                                             "algorithm=protonet"]
    assert all(row["status"] == "ok" and 0 <= float(row["test_acc"]) <= 1 for row in rows)
    # what compare.py runs, on the sweep's checkpoints and their test episodes
    records = [json.loads((tmp_path / row["dir"] / "results.json").read_text()) for row in rows]
    comparison = compare_checkpoints(
        [tmp_path / row["dir"] / record["tested_checkpoint"] for row, record in zip(rows, records)],
        ["episode.test_episodes=8"], tmp_path / "compare")
    assert ([(checkpoint["algorithm"], checkpoint["test_acc"])
             for checkpoint in comparison["checkpoints"]]
            == [(record["algorithm"], record["test_acc"]) for record in records])


@pytest.mark.slow
def test_meta_learning_py_trains_it(importable, tmp_path):
    record = meta_learning_main(["--algorithm", "nearest", "--set", search_path(importable),
                                 "--tasks", "4", "--meta-batch-size", "2",
                                 "--output-dir", str(tmp_path),
                                 *(f"--set={override}" for override in SMALL)])
    assert record["algorithm"] == "nearest" and record["train_steps"] >= 1
    assert (tmp_path / "results.json").is_file()
    listing = build_parser([search_path(importable)]).format_help()
    assert "nearest" in listing and "nearest" not in build_parser().format_help()


def test_the_api_builds_and_scores_it(importable, tmp_path):
    with pytest.raises(UserError, match="unknown algorithm 'nearest'; choose one of: anil"):
        MetaLearner("nearest")
    overrides = [search_path(importable), "backbone.hidden_channels=8", *LAKE]
    nearest = MetaLearner("nearest", overrides=overrides, output_dir=tmp_path / "nearest")
    protonet = MetaLearner("protonet", overrides=overrides, output_dir=tmp_path / "protonet")
    assert type(nearest.module).__name__ == "NearestNeighbour"
    one_shot, five_shot = (TaskSampler(split="test", k_shot=shots, overrides=LAKE)
                           for shots in (1, 5))
    # the same seed gives both the same untrained backbone; with one shot a class's nearest
    # support example is its prototype, so they agree there, and only there
    assert (evaluate_few_shot(nearest, one_shot, n_episodes=10)
            == evaluate_few_shot(protonet, one_shot, n_episodes=10))
    assert (evaluate_few_shot(nearest, five_shot, n_episodes=10)
            != evaluate_few_shot(protonet, five_shot, n_episodes=10))
