"""The numbers a run gives do not change when the code around the algorithms is rebuilt.

Short deterministic runs (`trainer.deterministic=true`, a few outer steps) of every algorithm, the
sinusoid, an image folder, a feature table, eval.py (shots, inner steps, transfer gain,
test-time augmentation), compare.py and the Python API, each checked against the results they gave
when they were recorded (tests/data/behaviour.json), to every digit. A change that is meant to move
a number re-records the file: `METALEARN_RECORD_BEHAVIOUR=1 pytest tests/test_behaviour_unchanged.py`
(and says why in its commit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metalearn.run.config_check import RL_ALGORITHMS
from tests.budgets import TABLES, write_digits_table
from tests.conftest import ROOT, make_config

RECORD = ROOT / "tests" / "data" / "behaviour.json"
RECORDING = os.environ.get("METALEARN_RECORD_BEHAVIOUR") == "1"
#: keys of a results record that depend on the machine or the directory, not on the numbers
VOLATILE = {"wall_time_s", "checkpoint", "tested_checkpoint"}

TINY = ["trainer.deterministic=true", "seed=3", "num_epochs=1", "episode.num_tasks=4",
        "episode.meta_batch_size=2", "episode.val_episodes=4", "episode.test_episodes=8",
        "episode.eval_batch_size=4", "logger=csv"]
OMNIGLOT = ["dataset.split=lake", "dataset.rotations=false"]
#: the few-shot algorithms (meta-RL's runs are held to their seeds and resumes by
#: tests/test_rl_runs.py)
ALGORITHMS = sorted(path.stem for path in (ROOT / "configs" / "algorithm").glob("*.yaml")
                    if path.stem not in RL_ALGORITHMS)
#: settings an algorithm needs to take a few steps in this budget
EXTRA = {"baseline": ["+trainer.limit_train_batches=2", "backbone.hidden_channels=8"],
         "baseline_pp": ["+trainer.limit_train_batches=2", "backbone.hidden_channels=8"],
         "rfs": ["+trainer.limit_train_batches=2", "backbone.hidden_channels=8"],
         "mann": [], "ntm": []}  # no convolutional backbone


def image_folder(root: Path) -> Path:
    """Eight classes of eight 10x10 RGB images, each class's pixels around its own colour."""
    for label in range(8):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(label)
        for index in range(8):
            pixels = np.clip(rng.normal(40 * label, 30, (10, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def runs(tmp: Path) -> dict[str, list[str]]:
    """Every recorded train.py run, by name: its overrides."""
    write_digits_table()
    folder = image_folder(tmp / "images")
    cases = {algorithm: [f"algorithm={algorithm}", *OMNIGLOT,
                         *EXTRA.get(algorithm, ["backbone.hidden_channels=8"])]
             for algorithm in ALGORITHMS}
    cases["maml_sinusoid"] = ["algorithm=maml", "dataset=sinusoid"]
    cases["reptile_sinusoid"] = ["algorithm=reptile", "dataset=sinusoid"]
    cases["protonet_image_folder"] = [
        "algorithm=protonet", "dataset=image_folder", f"dataset.root={folder}",
        "dataset.image_size=16", "dataset.split_fractions=[0.5,0.25,0.25]",
        "episode.n_way=2", "episode.query_size=3", "episode.train_n_way=2",
        "backbone.hidden_channels=8"]
    cases["maml_features"] = ["algorithm=maml", "dataset=features",
                              f"dataset.path={TABLES / 'digits.csv'}", "backbone=mlp",
                              "episode.n_way=2", "episode.query_size=5"]
    return {name: [*TINY, *overrides] for name, overrides in cases.items()}


def stable(record: dict) -> dict:
    """A results record without its machine- and directory-dependent keys (through by_shot)."""
    kept = {key: value for key, value in record.items() if key not in VOLATILE}
    if "by_shot" in kept:
        kept["by_shot"] = [stable(shot) for shot in kept["by_shot"]]
    return kept


@pytest.fixture(scope="module")
def recorded() -> dict:
    return {} if RECORDING else json.loads(RECORD.read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Runs everything once (about 3 minutes on 2 cores) and collects the records by name."""
    from metalearn import MetaLearner, TaskSampler, evaluate_few_shot
    from metalearn.run.compare import compare
    from metalearn.run.evaluate import evaluate
    from metalearn.run.training import train

    tmp = tmp_path_factory.mktemp("behaviour")
    got = {}
    for name, overrides in runs(tmp).items():
        got[name] = stable(train(make_config(overrides, tmp / name)))

    maml = str(tmp / "maml" / "checkpoints" / "last.ckpt")
    protonet = str(tmp / "protonet" / "checkpoints" / "last.ckpt")
    folder = str(tmp / "protonet_image_folder" / "checkpoints" / "last.ckpt")
    evaluations = {
        "eval_maml_steps_shots_gain": [f"ckpt_path={maml}", "eval.shots=[1,2]",
                                       "eval.inner_steps=[0,1]", "eval.transfer_gain=true",
                                       "episode.test_episodes=6", "episode.query_size=5"],
        "eval_protonet_tta": [f"ckpt_path={folder}", "eval.tta=3", "episode.test_episodes=6"],
    }
    for name, overrides in evaluations.items():
        got[name] = stable(evaluate(make_config(overrides, tmp / name, "eval"), overrides))
    overrides = [f"ckpt_paths=[{maml},{protonet}]", "episode.test_episodes=10"]
    comparison = compare(make_config(overrides, tmp / "compare", "compare"), overrides)
    for checkpoint in comparison["checkpoints"]:
        checkpoint.pop("checkpoint")
    got["compare"] = comparison

    learner = MetaLearner("maml", dataset="sinusoid", seed=5, meta_batch_size=2,
                          output_dir=tmp / "api")
    sampler = TaskSampler("sinusoid", k_shot=5, query_size=10, seed=1)
    losses = [learner.meta_train_step(sampler.sample(2)) for _ in range(3)]
    test = TaskSampler("sinusoid", k_shot=5, query_size=10, split="test")
    got["api_maml_sinusoid"] = {"losses": losses,
                                "test": list(evaluate_few_shot(learner, test, n_episodes=20))}
    return got


@pytest.mark.skipif(not RECORDING, reason="METALEARN_RECORD_BEHAVIOUR=1 re-records "
                    "tests/data/behaviour.json")
def test_record_is_written_when_asked(results):
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("name", [*ALGORITHMS, "maml_sinusoid", "reptile_sinusoid",
                                  "protonet_image_folder", "maml_features",
                                  "eval_maml_steps_shots_gain", "eval_protonet_tta", "compare",
                                  "api_maml_sinusoid"])
def test_results_equal_the_recorded_ones_to_every_digit(name, results, recorded):
    if RECORDING:
        pytest.skip("recording")
    assert name in recorded, f"{name} is not recorded in {RECORD}; re-record it"
    # through JSON, as recorded: tuples become lists
    assert json.loads(json.dumps(results[name])) == recorded[name]
