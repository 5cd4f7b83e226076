"""compare.py and the API's comparisons: checkpoints on the same test episodes with paired
differences and tests, on checkpoints saved untrained from the Python API (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metalearn import (
    MetaLearner,
    TaskSampler,
    compare_checkpoints,
    compare_learners,
    evaluate_few_shot,
)
from metalearn.errors import UserError
from metalearn.run.compare import compare
from metalearn.run.evaluate import evaluate
from tests.conftest import ROOT, make_config
from tests.helpers import user_error

LAKE = ["dataset.split=lake", "dataset.rotations=false"]
SMALL = [*LAKE, "backbone.hidden_channels=8"]
EPISODES = 8


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained 5-way MAML and ProtoNet checkpoints, and a 3-way MAML one."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, algorithm, n_way in (("maml", "maml", 5), ("protonet", "protonet", 5),
                                   ("maml_3way", "maml", 3)):
        learner = MetaLearner(algorithm, overrides=SMALL, n_way=n_way, output_dir=folder / name)
        paths[name] = learner.save(folder / f"{name}.ckpt")
    return paths


def run_compare(tmp_path: Path, paths: list[Path], *overrides: str) -> dict:
    """compare() as compare.py runs it, on EPISODES test episodes."""
    overrides = [f"ckpt_paths=[{','.join(map(str, paths))}]",
                 f"episode.test_episodes={EPISODES}", *overrides]
    return compare(make_config(overrides, tmp_path, config_name="compare"), overrides)



def test_compare_py_scores_each_checkpoint_as_eval_py_on_the_same_episodes(checkpoints,
                                                                          tmp_path):
    maml, protonet = checkpoints["maml"], checkpoints["protonet"]
    done = subprocess.run(
        [sys.executable, "compare.py", f"ckpt_paths=[{maml},{protonet},{maml}]",
         f"episode.test_episodes={EPISODES}", f"hydra.run.dir={tmp_path / 'cli'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    comparison = json.loads((tmp_path / "cli" / "comparison.json").read_text())
    first, second, third = comparison["checkpoints"]
    assert [entry["algorithm"] for entry in comparison["checkpoints"]] == ["maml", "protonet",
                                                                           "maml"]
    assert comparison["task"]["test_episodes"] == EPISODES
    assert comparison["task"]["eval_seed"] == 0

    # each score is eval.py's on the same episodes
    for entry, path in ((first, maml), (second, protonet)):
        overrides = [f"ckpt_path={path}", f"episode.test_episodes={EPISODES}"]
        alone = evaluate(make_config(overrides, tmp_path / path.stem, config_name="eval"),
                         overrides)
        assert entry["test_acc"] == pytest.approx(alone["test_acc"], abs=1e-6)
        assert entry["test_acc_ci95"] == pytest.approx(alone["test_acc_ci95"], abs=1e-6)

    one_two, one_three, two_three = comparison["pairs"]
    assert (one_two["a"], one_two["b"]) == (1, 2)
    assert one_two["difference"] == pytest.approx(first["test_acc"] - second["test_acc"], abs=1e-6)
    assert two_three["difference"] == pytest.approx(-one_two["difference"], abs=1e-9)
    # a checkpoint against itself: no difference, p = 1, never significant
    assert (one_three["difference"], one_three["difference_ci95"]) == (0.0, 0.0)
    assert one_three["p_ttest"] == one_three["p_wilcoxon"] == one_three["p_ttest_holm"] == 1.0
    assert not one_three["significant_ttest"] and not one_three["significant_wilcoxon"]
    # Holm over the three pairs, on each test's p-values
    smallest = min(one_two["p_ttest"], two_three["p_ttest"])
    assert min(one_two["p_ttest_holm"], two_three["p_ttest_holm"]) == pytest.approx(
        min(1.0, 3 * smallest))

    lines = done.stdout.splitlines()
    assert f"1: maml ({maml}): meta-test accuracy {100 * first['test_acc']:.2f}% +- " \
           f"{100 * first['test_acc_ci95']:.2f}%" in lines
    assert any(line.startswith("1 - 3: +0.00% +- 0.00% (paired 95% CI); Holm-corrected p = 1 "
                               "(t-test), 1 (Wilcoxon): not significant at 0.05")
               for line in lines)
    markdown = (tmp_path / "cli" / "comparison.md").read_text()
    assert "## Paired differences" in markdown and "scipy.stats.wilcoxon" in markdown
    assert "| 1 | 3 | 0 | 0 | 1 | 1 | False | 1 | 1 | False |" in markdown

    # the API gives the same comparison
    api = compare_checkpoints([maml, protonet, maml], [f"episode.test_episodes={EPISODES}"],
                              output_dir=tmp_path / "api")
    assert api["pairs"] == comparison["pairs"]
    assert (tmp_path / "api" / "comparison.md").is_file()


def test_overrides_apply_to_every_checkpoint(checkpoints, tmp_path):
    comparison = run_compare(tmp_path, [checkpoints["maml"], checkpoints["protonet"]],
                             "episode.k_shot=2", "episode.eval_seed=3")
    assert (comparison["task"]["k_shot"], comparison["task"]["eval_seed"]) == (2, 3)
    assert [entry["test_episodes"] for entry in comparison["checkpoints"]] == [EPISODES] * 2


def test_checkpoints_of_other_task_shapes_are_refused_naming_them(checkpoints, tmp_path):
    five, three = checkpoints["maml"], checkpoints["maml_3way"]
    message = user_error(run_compare, tmp_path, [five, three])
    assert message.startswith(f"ckpt_paths: these checkpoints test on different tasks ({five}: "
                              f"n_way 5; {three}: n_way 3)")


@pytest.mark.parametrize("paths,message", [
    ("[one.ckpt]", "ckpt_paths=['one.ckpt'] must be a list of two or more checkpoint paths"),
    ("one.ckpt", "ckpt_paths='one.ckpt' must be a list of two or more checkpoint paths"),
    ("[a.ckpt,b.ckpt]", "ckpt_paths='a.ckpt': no such file"),
])
def test_bad_checkpoint_lists_are_one_line(tmp_path, paths, message):
    overrides = [f"ckpt_paths={paths}"]
    cfg = make_config(overrides, tmp_path, config_name="compare")
    assert user_error(compare, cfg, overrides).startswith(message)


def test_compare_py_without_checkpoints_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "compare.py", f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: compare.py needs ckpt_paths=[A.ckpt,B.ckpt], two or more checkpoints written by "
        "train.py or the Python API")
    with pytest.raises(UserError, match="^compare.alpha=2 must be a number between 0 and 1$"):
        overrides = ["ckpt_paths=[a,b]", "compare.alpha=2"]
        compare(make_config(overrides, tmp_path, config_name="compare"), overrides)


def test_compare_learners_pairs_learners_on_the_sampler_episodes(checkpoints):
    learners = [MetaLearner.load(checkpoints[name]) for name in ("maml", "protonet")]
    sampler = TaskSampler("omniglot", 5, 1, 15, split="test", seed=0, overrides=LAKE)
    comparison = compare_learners(learners, sampler, n_episodes=EPISODES)
    scores = [evaluate_few_shot(learner, sampler, n_episodes=EPISODES) for learner in learners]
    assert [(row["score"], row["ci95"]) for row in comparison["learners"]] == [
        pytest.approx(score) for score in scores]
    [pair] = comparison["pairs"]
    assert (pair["a"], pair["b"]) == (1, 2)
    assert pair["difference"] == pytest.approx(scores[0][0] - scores[1][0], abs=1e-9)
    with pytest.raises(UserError, match="compare_learners needs two or more learners; got 1"):
        compare_learners(learners[:1], sampler, n_episodes=EPISODES)
