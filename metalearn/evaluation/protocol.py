"""The evaluation protocol: how any algorithm is scored on a set of episodes.

It asks a model only what the contract of every algorithm offers (metalearn/algorithms/base.py):
`predict_episodes(batch, steps)` adapts to each episode's support set, in `steps` inner steps
for the algorithms that adapt by gradient steps (None: the model's own number), and predicts its
queries; `episode_score` scores them (accuracy, or mean squared error for regression);
`extra_episode_scores` adds any further per-episode score the algorithm reports. Test-time
options are arguments, never changes to the model: the number of inner steps, and test-time
augmentation (class probabilities averaged over augmented views of each episode).

train.py's meta-validation and meta-test, eval.py, compare.py and the Python API all score
through `episode_scores`; `MetaTest` runs it in Lightning's test loop (devices, precision, DDP),
and `EpisodeScores` collects the scores of an evaluation and reports their mean and 95% interval.

The meta-test also records, per episode, which of the split's classes (or, for regression, which
group) it drew, the score of each class's queries and whether the predictions collapsed to one
answer; its summary then says how many distinct classes lie behind the interval, gives the
interval that resamples the classes as well (`class_bootstrap_ci95`), and counts the collapsed
episodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.aggregation import CatMetric

from metalearn.data.episodes import TaskBatch, seeded_generator
from metalearn.errors import NonFiniteError
from metalearn.evaluation.statistics import class_bootstrap_ci95, mean_and_ci95


class EpisodicModel(Protocol):
    """What the protocol asks of a model: every algorithm (EpisodicModule) offers it."""

    score_name: str  # "acc" or "mse"

    def predict_episodes(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Adapts to each task's support set, in `steps` steps where the algorithm adapts by
        steps (None: its own number), and predicts its queries: [B, Q, ...]."""

    def episode_score(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """Each task's score [B]: accuracy, or mean squared error."""

    def extra_episode_scores(self, batch: TaskBatch) -> dict[str, Tensor]:
        """More per-episode scores [B] by name."""


class Augmentation(NamedTuple):
    """Test-time augmentation: each episode scored by the class probabilities averaged over
    `views` views, view(batch, generator) each (support and query)."""

    view: Callable[[TaskBatch, torch.Generator], TaskBatch]
    views: int


def predict(model: EpisodicModel, batch: TaskBatch, steps: int | None = None,
            augmentation: Augmentation | None = None,
            generator: torch.Generator | None = None) -> Tensor:
    """Each episode's query predictions [B, Q, ...] after adapting to its support set in `steps`
    steps; with test-time augmentation, the class probabilities averaged over the views."""
    if augmentation is None:
        return model.predict_episodes(batch, steps)
    return sum(model.predict_episodes(augmentation.view(batch, generator), steps).softmax(-1)
               for _ in range(augmentation.views))


def score_episodes(model: EpisodicModel, batch: TaskBatch, steps: int | None = None,
                   augmentation: Augmentation | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """Each episode's query score [B] after adapting to its support set in `steps` steps."""
    return model.episode_score(predict(model, batch, steps, augmentation, generator),
                               batch.query_y)


def episode_scores(model: EpisodicModel, batch: TaskBatch, steps: int | None = None,
                   augmentation: Augmentation | None = None,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The model's score of each episode under its name ("acc", "mse"), then the extra
    per-episode scores it reports (on the episodes as drawn)."""
    return scores_of(model, batch, predict(model, batch, steps, augmentation, generator))


def scores_of(model: EpisodicModel, batch: TaskBatch, predictions: Tensor) -> dict[str, Tensor]:
    """`episode_scores` of predictions already made."""
    return {model.score_name: model.episode_score(predictions, batch.query_y),
            **model.extra_episode_scores(batch)}


def class_scores(model: EpisodicModel, batch: TaskBatch, predictions: Tensor) -> Tensor | None:
    """The score of each class's queries in each episode, [B, N] in the order of batch.classes
    (regression, one group per episode: [B, 1], the episode's score); the episode's score is the
    mean of its row. None where the batch does not know its classes, or where its classes have
    different numbers of queries (an episode's score is then not the mean of its classes')."""
    if batch.classes is None:
        return None
    ways = batch.classes.shape[1]
    if ways == 1:
        return model.episode_score(predictions, batch.query_y).unsqueeze(1)
    size, queries = batch.query_y.shape[:2]
    order = batch.query_y.argsort(dim=1, stable=True)  # the queries grouped by label
    rows = torch.arange(size, device=order.device).unsqueeze(1)
    labels = batch.query_y[rows, order]
    expected = torch.arange(ways, device=labels.device).repeat_interleave(queries // ways)
    if queries % ways or not (labels == expected).all():
        return None
    grouped = predictions[rows, order].reshape(size * ways, queries // ways,
                                               *predictions.shape[2:])
    return model.episode_score(grouped, labels.reshape(size * ways, -1)).view(size, ways)


#: regression predictions that vary across an episode's queries by less than this fraction of
#: the targets' range carry no information about the query: a collapsed model
COLLAPSED_SPREAD = 1e-3


def collapsed_episodes(predictions: Tensor, targets: Tensor, score_name: str) -> Tensor:
    """Whether each episode's predictions collapsed to one answer, [B]: every query predicted
    the same class (classification), or predictions that vary across the queries by less than
    COLLAPSED_SPREAD of the targets' range, in every output (regression; an episode whose
    targets do not vary, or that has one query, never counts)."""
    if score_name == "acc":
        labels = predictions.argmax(-1).flatten(1)
        return (labels == labels[:, :1]).all(1)

    def spread(values: Tensor) -> Tensor:  # over the queries, per output: [B, outputs]
        values = values.reshape(*values.shape[:2], -1)
        return values.amax(1) - values.amin(1)

    target_spread = spread(targets)
    return ((spread(predictions) <= COLLAPSED_SPREAD * target_spread)
            & (target_spread > 0)).all(1)


Summary = dict[str, float | int | None]  # {"test/acc": ..., "test/acc_ci95": ..., ...}


class EpisodeScores(nn.Module):
    """The per-episode scores of one evaluation, gathered over processes, and their summary;
    with the details of each episode where they are given (the meta-test's)."""

    def __init__(self):
        super().__init__()
        self.metrics = nn.ModuleDict()
        self.details = nn.ModuleDict()

    def update(self, scores: dict[str, Tensor], classes: Tensor | None = None,
               class_scores: Tensor | None = None, collapsed: Tensor | None = None) -> None:
        """Adds a batch of episodes: their scores by name [B]; where known, their classes
        [B, N] (TaskBatch.classes), the score of each of those classes' queries [B, N]
        (`class_scores`) and whether their predictions collapsed [B] (`collapsed_episodes`)."""
        self.append(self.metrics, scores)
        details = {"classes": classes, "class_scores": class_scores, "collapsed": collapsed}
        self.append(self.details, {name: values for name, values in details.items()
                                   if values is not None})

    @staticmethod
    def append(metrics: nn.ModuleDict, values_by_name: dict[str, Tensor]) -> None:
        for name, values in values_by_name.items():
            if name not in metrics:
                # nan_strategy="disable": a diverged episode makes the mean NaN, not vanish
                metrics[name] = CatMetric(nan_strategy="disable").to(values.device)
            metrics[name].update(values)

    @staticmethod
    def gathered(metrics: nn.ModuleDict) -> dict[str, Tensor]:
        """Each metric's values over all processes, in episode order (then reset); only the
        metrics updated since the last summary."""
        values = {name: metric.compute().cpu() for name, metric in metrics.items()
                  if metric.update_called}
        for metric in metrics.values():
            metric.reset()
        return values

    def summary(self, split: str, score_name: str, step: int,
                score_scale: float = 1.0) -> tuple[Summary, Tensor]:
        """The mean of each score over the episodes with its 95% interval (None with one
        episode), and how many episodes were scored ({"test/acc": ..., "test/acc_ci95": ...,
        "test/episodes": ...}); and the main score of each episode in episode order. A
        non-finite mean stops the run.

        Given the episodes' details: how many collapsed (`<split>/collapsed_episodes`), how many
        distinct classes (or groups) they drew (`<split>/classes`) and the 95% interval of the
        main score that resamples those classes too (`<split>/<score>_ci95_classes`,
        `class_bootstrap_ci95`). `score_scale` multiplies an MSE, per episode and so its mean
        and intervals: targets standardised by `scale` give MSEs in the original units at
        scale ** 2. Accuracy is never scaled.
        """
        scores = {name: values.flatten() for name, values in self.gathered(self.metrics).items()}
        details = self.gathered(self.details)
        scale = score_scale if score_name == "mse" else 1.0
        scores[score_name] = scores[score_name] * scale
        results: Summary = {}
        for name, values in scores.items():
            mean, ci95 = mean_and_ci95(values)
            if name == score_name and not math.isfinite(mean):
                raise NonFiniteError(f"the meta-{split} {score_name} became {mean} at step {step}")
            results |= {f"{split}/{name}": mean, f"{split}/{name}_ci95": ci95}
            if name == score_name:
                results[f"{split}/episodes"] = values.numel()
        episodes = scores[score_name].numel()
        if "collapsed" in details:
            results[f"{split}/collapsed_episodes"] = int(details["collapsed"].sum())
        classes = details.get("classes")
        if classes is not None and len(classes) == episodes:  # every episode's classes known
            classes = classes.long()
            results[f"{split}/classes"] = len(classes.unique())
            cell_scores = details.get("class_scores")
            results[f"{split}/{score_name}_ci95_classes"] = (
                None if cell_scores is None or len(cell_scores) != episodes
                else class_bootstrap_ci95(cell_scores * scale, classes))
        return results, scores[score_name]


class MetaTest(L.LightningModule):
    """Lightning's test loop over a data module's test episodes, scored by `episode_scores` with
    the given test-time options, recording each episode's details (classes, the score of each
    class's queries, collapse), and the data's own `metrics` of each episode where given
    (TaskFamily.episode_metrics: errors in the original units, nDCG). After
    `trainer.test(MetaTest(model, ...), datamodule=...)`, `results` holds the summary
    (`EpisodeScores.summary`, MSE times `score_scale`) and `per_episode` each episode's score,
    in episode order."""

    def __init__(self, model: EpisodicModel, steps: int | None = None,
                 augmentation: Augmentation | None = None, score_scale: float = 1.0,
                 metrics: Callable[[Tensor, Tensor], dict[str, Tensor]] | None = None):
        super().__init__()
        self.model, self.steps, self.augmentation = model, steps, augmentation
        self.score_scale, self.metrics = score_scale, metrics
        self.scores = EpisodeScores()
        self.results: Summary = {}
        self.per_episode: Tensor | None = None

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        # the views of test batch i are a fixed function of i, as its episodes are
        generator = (None if self.augmentation is None
                     else seeded_generator(self.augmentation.views, batch_idx))
        predictions = predict(self.model, batch, self.steps, self.augmentation, generator)
        scores = scores_of(self.model, batch, predictions)
        if self.metrics is not None:
            scores |= self.metrics(predictions, batch.query_y)
        self.scores.update(
            scores, batch.classes,
            class_scores(self.model, batch, predictions),
            collapsed_episodes(predictions, batch.query_y, self.model.score_name))

    def on_test_epoch_end(self) -> None:
        self.results, self.per_episode = self.scores.summary(
            "test", self.model.score_name, self.trainer.global_step, self.score_scale)
        self.log_dict(numbers_only(self.results), sync_dist=False)


def numbers_only(results: Summary) -> dict[str, float | int]:
    """What a logger can take of a summary: its numbers, without the intervals that do not exist
    (None, from one episode)."""
    return {key: value for key, value in results.items() if value is not None}
