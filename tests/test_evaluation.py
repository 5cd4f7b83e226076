"""eval.py's adaptation speed (eval.inner_steps), transfer gain (eval.transfer_gain) and its plots,
on checkpoints saved untrained from the Python API (no training)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metalearn import MetaLearner, TaskSampler
from metalearn.evaluation.plots import adaptation_speed_series, shot_series
from metalearn.run.evaluate import evaluate, transfer_record
from tests.conftest import ROOT, make_config
from tests.helpers import user_error

LAKE = ["dataset.split=lake", "dataset.rotations=false"]
SMALL = [*LAKE, "backbone.hidden_channels=8"]
EPISODES = 6


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained MAML (seed 0) and ProtoNet checkpoints of a small Conv4, 5-way 1-shot on the
    lake split."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for algorithm in ("maml", "protonet"):
        learner = MetaLearner(algorithm, overrides=SMALL, seed=0, output_dir=folder / algorithm)
        paths[algorithm] = learner.save(folder / f"{algorithm}.ckpt")
    return paths


def run_eval(tmp_path: Path, checkpoint: Path, *overrides: str) -> dict:
    """evaluate() as eval.py runs it, on EPISODES test episodes, writing into tmp_path."""
    overrides = [f"ckpt_path={checkpoint}", f"episode.test_episodes={EPISODES}", *overrides]
    return evaluate(make_config(overrides, tmp_path, config_name="eval"), overrides)



def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, from its IHDR chunk; fails on anything else."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# Adaptation speed --------------------------------------------------------------------------------
def test_zero_steps_score_the_unadapted_model_and_each_count_is_its_own_eval(checkpoints,
                                                                           tmp_path):
    result = run_eval(tmp_path / "steps", checkpoints["maml"], "eval.inner_steps=[3,0,1]")
    assert [entry["inner_steps"] for entry in result["by_steps"]] == [0, 1, 3]  # sorted
    by_steps = {entry["inner_steps"]: entry for entry in result["by_steps"]}

    # 0 steps: the meta-learned initialisation's own predictions, computed here by hand (BatchNorm
    # on each batch's statistics, as transductive_bn=true adapts and predicts)
    learner = MetaLearner.load(checkpoints["maml"], output_dir=tmp_path / "load")
    network = learner.module.learner.train()
    sampler = TaskSampler("omniglot", 5, 1, 15, split="test", seed=0, overrides=LAKE)
    with torch.no_grad():
        accuracies = [(network(episode.query_x[0]).argmax(-1) == episode.query_y[0]).float().mean()
                      for episode in sampler.fixed_episodes(EPISODES)]
    assert by_steps[0]["test_acc"] == pytest.approx(torch.stack(accuracies).mean().item(), abs=1e-6)
    assert by_steps[0]["test_acc"] != by_steps[3]["test_acc"]  # adaptation changes predictions

    # each count gives what eval.py gives with algorithm.test_inner_steps at that count, and the
    # record's own score stays at the checkpoint's test_inner_steps (3)
    # (+: eval.yaml composes protonet's algorithm config, which has no test_inner_steps)
    alone = run_eval(tmp_path / "one", checkpoints["maml"], "+algorithm.test_inner_steps=1")
    assert by_steps[1]["test_acc"] == pytest.approx(alone["test_acc"], abs=1e-6)
    assert by_steps[1]["test_acc_ci95"] == pytest.approx(alone["test_acc_ci95"], abs=1e-6)
    default = run_eval(tmp_path / "default", checkpoints["maml"])
    assert by_steps[3]["test_acc"] == pytest.approx(default["test_acc"], abs=1e-6)
    assert result["test_acc"] == pytest.approx(default["test_acc"], abs=1e-6)
    assert result["test_inner_steps"] == 3


def test_adaptation_speed_of_one_pass_algorithms_is_refused(checkpoints, tmp_path):
    message = user_error(run_eval, tmp_path, checkpoints["protonet"], "eval.inner_steps=[0,1]")
    assert message == ("eval.inner_steps=[0, 1] applies to algorithms that adapt by gradient "
                       "steps; protonet adapts in one pass over the support set")


def test_a_shot_that_does_not_fit_is_refused_before_any_is_tested(checkpoints, tmp_path):
    message = user_error(run_eval, tmp_path, checkpoints["protonet"], "eval.shots=[1,10]")
    assert message.startswith("episode.k_shot + episode.query_size = 10 + 15 = 25 is more than")
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("override,message", [
    ("eval.inner_steps=3", "eval.inner_steps=3 must be a list of inner step counts such as "
                           "[0,1,2,3,5,10]"),
    ("eval.inner_steps=[]", "eval.inner_steps=[] must be a list of inner step counts"),
    ("eval.inner_steps=[1,-1]", "eval.inner_steps=-1 must be a whole number >= 0"),
    ("eval.inner_steps=[0.5]", "eval.inner_steps=0.5 must be a whole number >= 0"),
    ("eval.transfer_gain=yes", "eval.transfer_gain='yes' must be true or false"),
    ("eval.transfer_gain=1", "eval.transfer_gain=1 must be true or false"),
    ("eval.transfer_seed=-2", "eval.transfer_seed=-2 must be a whole number >= 0"),
])
def test_bad_eval_settings_are_one_line_naming_the_key(checkpoints, tmp_path, override, message):
    overrides = [override] + (["eval.transfer_gain=true"] if "seed" in override else [])
    assert user_error(run_eval, tmp_path, checkpoints["maml"], *overrides).startswith(message)


# Transfer gain -----------------------------------------------------------------------------------
def test_transfer_record_is_the_paired_difference_of_known_scores():
    trained = torch.tensor([0.8, 0.6, 1.0, 0.7], dtype=torch.float64)
    untrained = torch.tensor([0.5, 0.4, 0.6, 0.6], dtype=torch.float64)
    results = {"test/acc": 0.525, "test/acc_ci95": 0.1}
    record = transfer_record("acc", trained, untrained, results, seed=3)
    differences = [0.3, 0.2, 0.4, 0.1]  # mean 0.25, sample sd 0.1290994
    assert record["gain"] == pytest.approx(0.25)
    assert record["gain_ci95"] == pytest.approx(1.96 * 0.1290994449 / 2, rel=1e-8)
    assert (record["random_init_test_acc"], record["transfer_seed"]) == (0.525, 3)
    from scipy import stats

    assert record["p_ttest"] == pytest.approx(stats.ttest_1samp(differences, 0).pvalue)
    # MSE: lower is better, so the gain is the random model's MSE minus the trained one's
    mse = transfer_record("mse", untrained, trained, {"test/mse": 0.8, "test/mse_ci95": 0.1}, 0)
    assert mse["gain"] == pytest.approx(0.25) and mse["random_init_test_mse"] == 0.8


def test_random_init_is_the_architecture_built_afresh_with_transfer_seed(checkpoints, tmp_path):
    """The MAML checkpoint was saved untrained from seed 0: the random initialisation of seed 0
    is that same model, so meta-training 'gained' exactly nothing; another seed differs."""
    same = run_eval(tmp_path / "same", checkpoints["maml"], "eval.transfer_gain=true")
    gain = same["transfer_gain"]
    assert gain["random_init_test_acc"] == pytest.approx(same["test_acc"], abs=1e-7)
    assert (gain["gain"], gain["gain_ci95"], gain["p_ttest"], gain["p_wilcoxon"]) == (0, 0, 1, 1)
    other = run_eval(tmp_path / "other", checkpoints["maml"], "eval.transfer_gain=true",
                     "eval.transfer_seed=1")["transfer_gain"]
    assert other["random_init_test_acc"] != pytest.approx(same["test_acc"], abs=1e-7)
    assert other["gain"] == pytest.approx(same["test_acc"] - other["random_init_test_acc"],
                                          abs=1e-6)


@pytest.mark.slow
def test_a_trained_protonet_gains_over_its_random_init(trained_protonet, tmp_path):
    record, run_dir = trained_protonet
    result = run_eval(tmp_path, run_dir / record["tested_checkpoint"], "eval.transfer_gain=true",
                      "episode.test_episodes=200")
    gain = result["transfer_gain"]
    assert gain["gain"] == pytest.approx(result["test_acc"] - gain["random_init_test_acc"],
                                         abs=1e-6)
    assert gain["gain"] - gain["gain_ci95"] > 0.05 and gain["p_ttest"] < 1e-6
    # paired: tighter than the two scores' own intervals combined
    assert gain["gain_ci95"] < result["test_acc_ci95"] + gain["random_init_test_acc_ci95"]


# The command line and the plots ------------------------------------------------------------------
def test_eval_py_writes_steps_shots_and_transfer_gain_with_their_plots(checkpoints, tmp_path):
    done = subprocess.run(
        [sys.executable, "eval.py", f"ckpt_path={checkpoints['maml']}", "eval.inner_steps=[0,2]",
         "eval.shots=[1,2]", "eval.transfer_gain=true", f"episode.test_episodes={EPISODES}",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    one, two = result["by_shot"]
    assert (one["k_shot"], two["k_shot"]) == (1, 2)
    for shot in (one, two):
        assert [entry["inner_steps"] for entry in shot["by_steps"]] == [0, 2]
        assert shot["transfer_gain"]["transfer_seed"] == 0
    assert result["by_steps"] == one["by_steps"]
    lines = done.stdout.splitlines()
    assert f"  after 2 inner steps: accuracy {100 * two['by_steps'][1]['test_acc']:.2f}% +- " \
           f"{100 * two['by_steps'][1]['test_acc_ci95']:.2f}%" in lines
    assert any(line.startswith("2-shot transfer gain: meta-trained accuracy") for line in lines)
    markdown = (tmp_path / "results.md").read_text()
    assert "## Adaptation speed (2-shot)" in markdown and "## Transfer gain (1-shot)" in markdown

    # the plots are what results.json holds
    assert adaptation_speed_series(result) == {
        f"{shot['k_shot']}-shot": [(entry["inner_steps"], entry["test_acc"],
                                    entry["test_acc_ci95"]) for entry in shot["by_steps"]]
        for shot in (one, two)}
    assert shot_series(result) == [(1, one["test_acc"], one["test_acc_ci95"]),
                                   (2, two["test_acc"], two["test_acc_ci95"])]
    for name in ("adaptation_speed.png", "accuracy_by_shot.png"):
        assert png_size(tmp_path / "plots" / name) == (600, 400)


def test_without_steps_or_shots_no_plot_is_written(checkpoints, tmp_path):
    result = run_eval(tmp_path, checkpoints["protonet"])
    assert "by_steps" not in result and "transfer_gain" not in result
    assert not (tmp_path / "plots").exists()
    assert shot_series(result) == [] and adaptation_speed_series(result) == {}
