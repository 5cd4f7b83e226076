"""Intervals that never claim too much: no interval from one episode (null in the JSON, never
NaN), the distinct test classes behind every interval with an interval that resamples them too
(a two-level bootstrap, checked against a loop written by hand), warnings for few classes and
for collapsed predictions, and results.md / comparison.md ready for a paper."""

from __future__ import annotations

import json
import logging
import math
import time

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from metalearn.data.episodes import (
    ClassExamples,
    Task,
    TaskBatch,
    TaskShape,
    sample_classification_episodes,
)
from metalearn.evaluation import plots
from metalearn.evaluation.protocol import EpisodeScores, MetaTest, class_scores, collapsed_episodes
from metalearn.evaluation.results import (
    FEW_CLASSES,
    comparison_record,
    comparison_table,
    describe,
    describe_comparison,
    json_text,
    results_record,
    results_table,
    score_warnings,
    write_comparison,
)
from metalearn.evaluation.statistics import (
    Z_95,
    class_bootstrap_ci95,
    mean_and_ci95,
    paired_difference,
    pairwise_comparisons,
)


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as every JSON reader but Python's does."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


class GivenPredictions(nn.Module):
    """A classifier whose query predictions [B, Q, N] are given, scored as every algorithm
    scores (metalearn/algorithms/base.py)."""

    score_name = "acc"

    def __init__(self, predictions: Tensor):
        super().__init__()
        self.predictions = predictions

    def predict_episodes(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        return self.predictions

    def episode_score(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return (predictions.argmax(-1) == targets).float().flatten(1).mean(1)

    def extra_episode_scores(self, batch: TaskBatch) -> dict[str, Tensor]:
        return {}


def split_of(classes: int, per_class: int) -> ClassExamples:
    """A split whose every example is one number: its class index (to see which class a task
    drew)."""
    by_class = torch.arange(classes, dtype=torch.float32).view(classes, 1, 1).expand(
        classes, per_class, 1)
    return ClassExamples.dense(by_class.contiguous(), [f"c{c}" for c in range(classes)])


# The episodes know their classes -----------------------------------------------------------------
def test_sampled_episodes_carry_the_class_of_each_label():
    batch = sample_classification_episodes(split_of(12, 6), TaskShape(4, 2, 3), 5,
                                           torch.Generator().manual_seed(0))
    assert batch.classes.shape == (5, 4)
    for task in range(5):
        assert len(batch.classes[task].unique()) == 4  # N distinct classes
        for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
            # each example is its class's index: label i's examples are class classes[:, i]'s
            assert torch.equal(x[task, :, 0], batch.classes[task, y[task]].float())


def test_a_batch_keeps_its_classes_when_selected_and_concatenated_and_tasks_have_four_parts():
    batch = sample_classification_episodes(split_of(12, 6), TaskShape(3, 1, 2), 4,
                                           torch.Generator().manual_seed(1))
    assert torch.equal(batch.select(slice(1, None, 2)).classes, batch.classes[1::2])
    assert len(batch.task(0)) == 4 and isinstance(batch.task(0), Task)
    assert torch.equal(TaskBatch.concat([batch, batch]).classes, torch.cat([batch.classes] * 2))
    unknown = TaskBatch(*batch[:4])
    assert unknown.classes is None and unknown.select([0, 2]).classes is None
    assert TaskBatch.concat([batch, unknown]).classes is None  # not known for every task
    assert TaskBatch.stack(batch.tasks()).classes is None
    assert torch.equal(TaskBatch.stack(batch.tasks()).query_x, batch.query_x)


# No interval from one episode --------------------------------------------------------------------
def test_one_episode_has_no_interval_and_no_test():
    assert mean_and_ci95(torch.tensor([0.2])) == (pytest.approx(0.2), None)
    paired = paired_difference(torch.tensor([0.6]), torch.tensor([0.2]))
    assert paired["difference"] == pytest.approx(0.4)
    assert paired["difference_ci95"] is paired["p_ttest"] is paired["p_wilcoxon"] is None
    [pair] = pairwise_comparisons([torch.tensor([0.6]), torch.tensor([0.2])])
    assert pair["p_ttest_holm"] is pair["p_wilcoxon_holm"] is None
    assert not pair["significant_ttest"] and not pair["significant_wilcoxon"]


def test_a_comparison_on_one_episode_is_valid_json_and_says_there_is_no_interval(tmp_path):
    pairs = [dict(pair, a=pair["a"] + 1, b=pair["b"] + 1)
             for pair in pairwise_comparisons([torch.tensor([0.6]), torch.tensor([0.2])])]
    checkpoints = [{"id": number, "algorithm": "maml", "checkpoint": f"{number}.ckpt",
                    "test_acc": acc, "test_acc_ci95": None, "test_episodes": 1,
                    "test_pair_acc": math.nan, "warnings": []}
                   for number, acc in ((1, 0.6), (2, 0.2))]
    comparison = comparison_record(config("maml", "omniglot"), checkpoints, pairs, 0.05)
    written = strict_json((write_comparison(tmp_path, comparison)).read_text())
    assert written["pairs"][0]["difference_ci95"] is None
    assert written["checkpoints"][0]["test_pair_acc"] is None  # NaN became null
    lines = describe_comparison(comparison)
    assert lines[0].endswith("meta-test accuracy 60.00%, no interval (1 episode)")
    assert lines[2].startswith("1 - 2: +40.00%, no interval (1 episode) (paired 95% CI); "
                               "Holm-corrected p = n/a (1 episode)")
    assert "+-" not in "\n".join(lines)


def test_json_text_writes_non_finite_numbers_as_null_everywhere():
    record = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": (0.5,)}
    assert strict_json(json_text(record)) == {"a": None, "b": [1.0, None, {"c": None}],
                                              "d": [0.5]}


# The interval that resamples the classes ---------------------------------------------------------
def reference_bootstrap(cell_scores: Tensor, classes: Tensor, resamples: int,
                        seed: int) -> float:
    """The two-level bootstrap written as loops: per resample, draw the distinct classes with
    replacement, then the episodes with replacement (in that order from one generator), and
    average every cell (episode, class) weighted by how often its episode and its class were
    drawn; 1.96 sample standard deviations of those means."""
    generator = torch.Generator().manual_seed(seed)
    distinct = sorted(set(classes.flatten().tolist()))
    episodes, ways = cell_scores.shape
    class_draws = [torch.randint(len(distinct), (len(distinct),), generator=generator).tolist()
                   for _ in range(resamples)]
    episode_draws = [torch.randint(episodes, (episodes,), generator=generator).tolist()
                     for _ in range(resamples)]
    estimates = []
    for picked_classes, picked_episodes in zip(class_draws, episode_draws):
        total = weight = 0.0
        for episode in range(episodes):
            for slot in range(ways):
                position = distinct.index(int(classes[episode, slot]))
                cell = picked_episodes.count(episode) * picked_classes.count(position)
                total += cell * float(cell_scores[episode, slot])
                weight += cell
        if weight > 0:
            estimates.append(total / weight)
    mean = sum(estimates) / len(estimates)
    spread = math.sqrt(sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1))
    return Z_95 * spread


@pytest.mark.parametrize("ways", [1, 3])
def test_class_bootstrap_equals_the_loop_written_by_hand(ways):
    generator = torch.Generator().manual_seed(4)
    episodes, resamples = 9, 60
    classes = torch.stack([torch.randperm(7, generator=generator)[:ways] * 10 + 3
                           for _ in range(episodes)])  # class ids need not be 0..C-1
    cell_scores = torch.rand(episodes, ways, generator=generator, dtype=torch.float64)
    got = class_bootstrap_ci95(cell_scores, classes, resamples,
                               torch.Generator().manual_seed(11))
    assert got == pytest.approx(reference_bootstrap(cell_scores, classes, resamples, 11),
                                rel=1e-12)


def test_class_bootstrap_widens_when_classes_decide_the_score_and_needs_two_classes():
    # 600 5-way episodes over 6 classes; a cell's score is its class's difficulty plus noise
    generator = torch.Generator().manual_seed(0)
    classes = torch.stack([torch.randperm(6, generator=generator)[:5] for _ in range(600)])
    difficulty = torch.tensor([0.2, 0.9, 0.5, 0.3, 0.8, 0.6], dtype=torch.float64)
    cells = difficulty[classes] + 0.05 * torch.randn(600, 5, generator=generator,
                                                     dtype=torch.float64)
    _, episode_ci = mean_and_ci95(cells.mean(1))
    assert class_bootstrap_ci95(cells, classes) > 5 * episode_ci
    assert class_bootstrap_ci95(cells, classes) == class_bootstrap_ci95(cells, classes)
    assert class_bootstrap_ci95(cells[:, :1], torch.zeros(600, 1)) is None  # one group
    assert class_bootstrap_ci95(cells[:1], classes[:1]) is None  # one episode


def test_class_bootstrap_of_600_episodes_is_vectorised():
    generator = torch.Generator().manual_seed(0)
    classes = torch.stack([torch.randperm(20, generator=generator)[:5] for _ in range(600)])
    started = time.perf_counter()
    class_bootstrap_ci95(torch.rand(600, 5, generator=generator), classes)
    assert time.perf_counter() - started < 2.0  # 0.2 s on 2 busy cores; a loop takes minutes


# Per-episode details -----------------------------------------------------------------------------
def test_class_scores_are_the_accuracy_of_each_class_queries():
    batch = sample_classification_episodes(split_of(10, 8), TaskShape(3, 2, 4), 6,
                                           torch.Generator().manual_seed(2))
    predictions = torch.randn(6, 12, 3, generator=torch.Generator().manual_seed(3))
    model = GivenPredictions(predictions)
    got = class_scores(model, batch, predictions)
    for task in range(6):
        for label in range(3):
            queries = batch.query_y[task] == label
            correct = predictions[task, queries].argmax(-1) == label
            assert got[task, label] == pytest.approx(correct.float().mean().item())
    # the episode's accuracy is the mean of its classes'
    assert torch.allclose(got.mean(1), model.episode_score(predictions, batch.query_y))
    uneven = batch._replace(query_y=torch.zeros_like(batch.query_y))
    assert class_scores(model, uneven, predictions) is None
    assert class_scores(model, TaskBatch(*batch[:4]), predictions) is None


def test_collapse_is_one_class_for_every_query_or_flat_regression_predictions():
    constant = torch.zeros(2, 6, 3)
    constant[..., 1] = 1.0
    varied = torch.eye(3).repeat(2, 2, 1)
    assert collapsed_episodes(torch.cat([constant, varied]), None, "acc").tolist() == [
        True, True, False, False]
    targets = torch.linspace(-1, 1, 10).view(1, 10, 1).repeat(3, 1, 1)
    predictions = torch.stack([torch.full((10, 1), 0.3),  # flat
                               0.3 + 1e-5 * targets[0],  # flat but for rounding
                               0.5 * targets[0]])  # follows the targets
    assert collapsed_episodes(predictions, targets, "mse").tolist() == [True, True, False]
    one_query = torch.zeros(1, 1, 1)
    assert collapsed_episodes(one_query, one_query, "mse").tolist() == [False]


def test_summary_reports_classes_their_interval_and_collapsed_episodes():
    scores = EpisodeScores()
    classes = torch.tensor([[0, 1], [2, 1], [0, 3], [3, 2]])
    cells = torch.tensor([[1.0, 0.5], [0.0, 0.5], [1.0, 1.0], [0.5, 0.0]])
    scores.update({"acc": cells.mean(1)[:2]}, classes[:2], cells[:2], torch.tensor([True, False]))
    scores.update({"acc": cells.mean(1)[2:]}, classes[2:], cells[2:], torch.tensor([True, True]))
    results, per_episode = scores.summary("test", "acc", 0)
    assert torch.equal(per_episode, cells.mean(1))
    assert results["test/classes"] == 4 and results["test/collapsed_episodes"] == 3
    assert results["test/acc_ci95_classes"] == pytest.approx(
        class_bootstrap_ci95(cells.double(), classes), rel=1e-6)
    # validation gives no details, and gets none of their keys
    scores.update({"acc": torch.tensor([0.5])})
    results, _ = scores.summary("val", "acc", 0)
    assert results == {"val/acc": 0.5, "val/acc_ci95": None, "val/episodes": 1}


def test_score_scale_multiplies_an_mse_and_its_intervals_but_never_an_accuracy():
    mse = torch.tensor([0.5, 1.0, 2.0, 0.25])
    groups = torch.tensor([[0], [1], [2], [1]])
    summaries = []
    for scale in (1.0, 3.0):
        scores = EpisodeScores()
        scores.update({"mse": mse}, groups, mse.unsqueeze(1))
        summaries.append(scores.summary("test", "mse", 0, score_scale=scale ** 2))
    (plain, plain_episodes), (scaled, scaled_episodes) = summaries
    for key in ("test/mse", "test/mse_ci95", "test/mse_ci95_classes"):
        assert scaled[key] == pytest.approx(9 * plain[key])
    assert torch.allclose(scaled_episodes, 9 * plain_episodes)
    assert plain["test/mse"] == pytest.approx(mse.mean().item())
    scores = EpisodeScores()
    scores.update({"acc": torch.tensor([0.5, 1.0])})
    assert scores.summary("test", "acc", 0, score_scale=9.0)[0]["test/acc"] == 0.75


def test_meta_test_finds_a_collapsed_model_on_sampled_episodes(tmp_path):
    split = split_of(10, 8)
    batches = [sample_classification_episodes(split, TaskShape(5, 1, 3), 4,
                                              torch.Generator().manual_seed(seed))
               for seed in range(2)]
    collapsed = GivenPredictions(torch.zeros(4, 15, 5))  # always label 0
    meta_test = MetaTest(collapsed)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.test(meta_test, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    results = meta_test.results
    assert results["test/acc"] == pytest.approx(0.2) and results["test/episodes"] == 8
    assert results["test/collapsed_episodes"] == 8
    classes = torch.cat([batch.classes for batch in batches])
    assert results["test/classes"] == len(classes.unique())
    # label 0's queries are all right, the others' all wrong: the cells differ, episodes do not
    cells = torch.zeros(8, 5, dtype=torch.float64)
    cells[:, 0] = 1.0
    assert results["test/acc_ci95"] == 0.0
    assert results["test/acc_ci95_classes"] == pytest.approx(class_bootstrap_ci95(cells, classes))
    assert results["test/acc_ci95_classes"] > 0


# Warnings and the records ------------------------------------------------------------------------
def config(algorithm: str, dataset: str, **episode):
    return OmegaConf.create({
        "algorithm": {"_target_": f"metalearn.algorithms.{algorithm}.X"},
        "dataset": {"_target_": f"metalearn.data.{dataset}.X",
                    **({"split": "lake"} if dataset == "omniglot" else {})},
        "episode": {"n_way": 5, "k_shot": 1, "query_size": 15, "test_episodes": 600,
                    "eval_seed": 0, **episode}})


def test_few_classes_and_collapse_are_warned_in_the_log_and_the_record(caplog):
    scores = {"test/acc": 0.2, "test/acc_ci95": 0.0, "test/episodes": 600,
              "test/collapsed_episodes": 590, "test/classes": 20,
              "test/acc_ci95_classes": 0.031}
    with caplog.at_level(logging.WARNING):
        record = results_record(config("maml", "omniglot"), scores)
    few, collapse = record["warnings"]
    assert few.startswith("the 600 test episodes draw on only 20 distinct test classes: "
                          "test_acc_ci95 (+- 0.00%) counts episodes only")
    assert "mini-ImageNet" in few and "test_acc_ci95_classes (+- 3.10%)" in few
    assert collapse == ("590 of 600 test episodes predicted one class for every query: the "
                        "model may have collapsed to a constant output")
    assert [r.getMessage() for r in caplog.records] == [few, collapse]
    fine = dict(scores, **{"test/classes": FEW_CLASSES, "test/collapsed_episodes": 300})
    assert results_record(config("maml", "omniglot"), fine)["warnings"] == []
    one_class = {"test_acc": 0.5, "test_acc_ci95": 0.1, "test_episodes": 8, "test_classes": 1,
                 "test_acc_ci95_classes": None}
    assert score_warnings(one_class)[0].endswith("counts episodes only, as the usual interval "
                                                 "of mini-ImageNet's 20 test classes does; no "
                                                 "interval resamples a single class")


def test_a_regression_record_has_no_n_way_and_warns_of_few_groups():
    scores = {"test/mse": 0.5, "test/mse_ci95": 0.1, "test/episodes": 8,
              "test/collapsed_episodes": 0, "test/classes": 3, "test/mse_ci95_classes": 0.25}
    record = results_record(config("maml", "features", query_size=10), scores)
    assert "n_way" not in record
    assert record["warnings"] == [
        "the 8 test episodes draw on only 3 distinct test groups: test_mse_ci95 (+- 0.1000) "
        "counts episodes only; test_mse_ci95_classes (+- 0.2500) resamples the groups too"]
    assert describe(record) == ("maml on features 1-shot: meta-test MSE 0.5000 +- 0.1000 "
                                "(95% CI, 8 episodes of 3 test groups; +- 0.2500 resampling the "
                                "groups too)")


def test_one_episode_is_described_without_an_interval():
    scores = {"test/acc": 0.2, "test/acc_ci95": None, "test/episodes": 1,
              "test/collapsed_episodes": 0, "test/classes": 5, "test/acc_ci95_classes": None}
    record = results_record(config("protonet", "omniglot", test_episodes=1), scores)
    assert describe(record) == ("protonet on omniglot 5-way 1-shot: meta-test accuracy 20.00%, "
                                "no interval (1 episode) (1 episode of 5 test classes)")
    assert strict_json(json_text(record))["test_acc_ci95"] is None
    assert record["warnings"] == [
        "the 1 test episode draws on only 5 distinct test classes: test_acc_ci95 (none) counts "
        "episodes only, as the usual interval of mini-ImageNet's 20 test classes does; no "
        "interval resamples one episode"]


def test_results_md_is_a_titled_table_of_rounded_percentages_with_their_intervals():
    scores = {"test/acc": 0.7710666698217392, "test/acc_ci95": 0.012345, "test/episodes": 600,
              "test/collapsed_episodes": 0, "test/classes": 20, "test/acc_ci95_classes": 0.0345,
              "test/pair_acc": 0.5, "test/pair_acc_ci95": 0.01}
    record = results_record(config("protonet", "omniglot"), scores)
    record["best_val_acc"] = 0.80123
    markdown = results_table(record)
    lines = markdown.splitlines()
    assert lines[0] == "# protonet on omniglot (lake split), 5-way 1-shot, 15 queries per class"
    assert "> - the 600 test episodes draw on only 20 distinct test classes" in markdown
    assert "| test_acc | 77.11% \u00b1 1.23% |" in lines
    assert "| test_acc_ci95_classes | \u00b1 3.45% |" in lines
    assert "| test_pair_acc | 50.00% \u00b1 1.00% |" in lines
    assert "| best_val_acc | 80.12% |" in lines
    assert "| test_classes | 20 |" in lines
    rows = [line for line in lines if line.startswith("| ")]
    assert rows[1:3] == ["| test_acc | 77.11% \u00b1 1.23% |",  # the score first
                         "| test_acc_ci95_classes | \u00b1 3.45% |"]
    assert "0.7710666698217392" not in markdown and "n_way" not in markdown
    assert ("Intervals: 95% CI, 600 episodes of 20 test classes; \u00b1 3.45% resampling the "
            "classes too.") in lines


def test_comparison_md_has_the_task_in_its_title_and_rounded_scores(tmp_path):
    checkpoints = [{"id": 1, "algorithm": "maml", "checkpoint": "a.ckpt", "test_acc": 0.61234,
                    "test_acc_ci95": 0.0123, "test_episodes": 600, "test_classes": 20,
                    "test_acc_ci95_classes": 0.04, "warnings": ["few"]}]
    comparison = comparison_record(config("maml", "omniglot"), checkpoints, [], 0.05)
    markdown = comparison_table(comparison)
    assert markdown.startswith("# Comparison on the same test episodes: omniglot (lake split), "
                               "5-way 1-shot, 15 queries per class")
    assert "> - 1 (maml): few" in markdown
    assert "| 1 | maml | 61.23% \u00b1 1.23% | \u00b1 4.00% | a.ckpt |" in markdown
    assert "drawn from 20 distinct test classes" in markdown


# Plots -------------------------------------------------------------------------------------------
def test_plots_are_titled_and_draw_a_score_without_an_interval(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(plots.Figure, "suptitle", lambda self, text: titles.append(text))
    rows = [{"step": 1, "train/loss": 1.0}, {"step": 2, "val/acc": 0.4},
            {"step": 4, "val/acc": 0.5, "val/acc_ci95": 0.1}]
    plots.plot_learning_curves(rows, tmp_path / "curves.png", "maml on omniglot, 5-way 1-shot")
    assert titles == ["maml on omniglot, 5-way 1-shot"]
    result = {"algorithm": "maml", "dataset": "sinusoid", "k_shot": 5, "query_size": 10,
              "test_episodes": 1, "test_mse": 0.5, "test_mse_ci95": None,
              "by_steps": [{"inner_steps": 0, "test_mse": 0.9, "test_mse_ci95": None},
                           {"inner_steps": 1, "test_mse": 0.5, "test_mse_ci95": None}]}
    [written] = plots.write_eval_plots(tmp_path, result)
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
