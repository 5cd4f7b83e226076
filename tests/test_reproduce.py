"""experiments/reproduce.py: the runs it starts and the table it writes from their results."""

from __future__ import annotations

import json
import sys

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metalearn.paths import project_root
from metalearn.run.build import build
from tests.conftest import make_config

sys.path.insert(0, f"{project_root()}/experiments")
import reproduce  # noqa: E402


def test_each_row_runs_the_paper_setup_where_there_is_one_at_the_rows_shot(tmp_path):
    maml = reproduce.run_overrides("maml", 5, "cpu10", tmp_path)
    assert maml[0] == "experiment=maml_omniglot" and "episode.k_shot=5" in maml
    assert "callbacks.cpu_time_limit.minutes=10" in maml and "dataset.split=vinyals" in maml
    assert reproduce.run_overrides("rfs", 1, "paper", tmp_path)[0] == "algorithm=rfs"
    assert not any("cpu_time" in o for o in reproduce.run_overrides("rfs", 1, "paper", tmp_path))
    assert set(reproduce.PAPER) == set(reproduce.ALGORITHMS)


def test_every_row_is_a_config_that_builds_on_omniglot(tmp_path):
    """Each algorithm's setup at each shot passes every check train.py makes before training
    (5-shot rows of 1-shot paper setups once asked for more examples than a class holds)."""
    task_families = {}  # one per distinct dataset node
    for algorithm in reproduce.ALGORITHMS:
        for shot in (1, 5):
            overrides = reproduce.run_overrides(algorithm, shot, "cpu10", tmp_path)
            cfg = make_config([o for o in overrides if not o.startswith("hydra.")], tmp_path)
            key = OmegaConf.to_yaml(cfg.dataset)
            if key not in task_families:
                task_families[key] = instantiate(cfg.dataset)
            build(cfg, tasks=task_families[key])  # raises a UserError naming what does not fit


def test_the_table_gives_each_finished_run_beside_the_paper_and_the_gap():
    records = {"protonet_1shot": {"test_acc": 0.9812, "test_acc_ci95": 0.0031,
                                  "train_steps": 2510, "date": "2026-12-02", "clock": "cpu",
                                  "setup": "experiment=protonet_omniglot"}}
    table = reproduce.table("cpu10", records, [1, 5])
    row = next(line for line in table.splitlines() if line.startswith("| protonet | 1 |"))
    assert "| `experiment=protonet_omniglot` | 98.12% +- 0.31% | 2510 | 98.8% |" in row
    assert row.endswith("| 2026-12-02 |")
    assert "| -0.7 |" in row  # 98.12 - 98.8
    assert "| protonet | 5 | | not run |" in table
    assert "| ntm | 1 | | not run | | - |" in table  # no published figure


@pytest.mark.parametrize("argument", ["budget=gpu", "algorithms=maml,nope", "speed=2"])
def test_bad_arguments_are_one_line(argument):
    with pytest.raises(SystemExit, match="error: "):
        reproduce.parse([argument])


def test_finished_rows_are_saved_as_they_come_and_not_run_again(tmp_path, monkeypatch):
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    ran = []

    def fake_run(algorithm, shot, budget, run_dir, one_thread):
        ran.append((algorithm, shot, one_thread))
        return None if algorithm == "maml" else {"test_acc": 0.9, "test_acc_ci95": 0.01,
                                                 "train_steps": 7, "date": "2026-12-02",
                                                 "setup": "algorithm=protonet"}

    monkeypatch.setattr(reproduce, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["reproduce.py", "algorithms=protonet,maml", "shots=1"])
    reproduce.main()
    assert sorted(ran) == [("maml", 1, True), ("protonet", 1, True)]
    saved = json.loads((tmp_path / "experiments/results/reproduction_cpu10.json").read_text())
    assert list(saved) == ["protonet_1shot"]  # the failed row is left to run again
    assert "| protonet | 1 | `algorithm=protonet` | 90.00% +- 1.00% | 7 |" in (
        tmp_path / "experiments/results/reproduction.md").read_text()
    ran.clear()
    reproduce.main()
    assert ran == [("maml", 1, True)]

    # a row another sitting saves while this one runs is kept
    def run_beside_another_sitting(algorithm, shot, budget, run_dir, one_thread):
        records_path.write_text(json.dumps({**saved, "rfs_1shot": saved["protonet_1shot"]}))
        return fake_run(algorithm, shot, budget, run_dir, one_thread)

    records_path = tmp_path / "experiments/results/reproduction_cpu10.json"
    monkeypatch.setattr(reproduce, "run", run_beside_another_sitting)
    monkeypatch.setattr(sys, "argv", ["reproduce.py", "algorithms=protonet", "shots=5"])
    reproduce.main()
    assert sorted(json.loads(records_path.read_text())) == [
        "protonet_1shot", "protonet_5shot", "rfs_1shot"]
