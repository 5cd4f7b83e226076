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
from metalearn.evaluation.statistics import mean_and_ci95


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


def score_episodes(model: EpisodicModel, batch: TaskBatch, steps: int | None = None,
                   augmentation: Augmentation | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """Each episode's query score [B] after adapting to its support set in `steps` steps."""
    if augmentation is None:
        return model.episode_score(model.predict_episodes(batch, steps), batch.query_y)
    probabilities = sum(
        model.predict_episodes(augmentation.view(batch, generator), steps).softmax(-1)
        for _ in range(augmentation.views))
    return model.episode_score(probabilities, batch.query_y)


def episode_scores(model: EpisodicModel, batch: TaskBatch, steps: int | None = None,
                   augmentation: Augmentation | None = None,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The model's score of each episode under its name ("acc", "mse"), then the extra
    per-episode scores it reports (on the episodes as drawn)."""
    return {model.score_name: score_episodes(model, batch, steps, augmentation, generator),
            **model.extra_episode_scores(batch)}


class EpisodeScores(nn.Module):
    """The per-episode scores of one evaluation, gathered over processes, and their summary."""

    def __init__(self):
        super().__init__()
        self.metrics = nn.ModuleDict()

    def update(self, scores: dict[str, Tensor]) -> None:
        for name, values in scores.items():
            if name not in self.metrics:
                # nan_strategy="disable": a diverged episode makes the mean NaN, not vanish
                self.metrics[name] = CatMetric(nan_strategy="disable").to(values.device)
            self.metrics[name].update(values)

    def summary(self, split: str, score_name: str, step: int) -> tuple[dict[str, float], Tensor]:
        """The mean of each score over the episodes with its 95% interval, and how many episodes
        were scored ({"test/acc": ..., "test/acc_ci95": ..., "test/episodes": ...}); and the
        main score of each episode in episode order. A non-finite mean stops the run."""
        scores = {name: metric.compute().flatten().cpu() for name, metric in self.metrics.items()}
        for metric in self.metrics.values():
            metric.reset()
        results: dict[str, float] = {}
        for name, values in scores.items():
            mean, ci95 = mean_and_ci95(values)
            if name == score_name and not math.isfinite(mean):
                raise NonFiniteError(f"the meta-{split} {score_name} became {mean} at step {step}")
            results |= {f"{split}/{name}": mean, f"{split}/{name}_ci95": ci95}
            if name == score_name:
                results[f"{split}/episodes"] = values.numel()
        return results, scores[score_name]


class MetaTest(L.LightningModule):
    """Lightning's test loop over a data module's test episodes, scored by `episode_scores` with
    the given test-time options. After `trainer.test(MetaTest(model, ...), datamodule=...)`,
    `results` holds the summary and `per_episode` each episode's score, in episode order."""

    def __init__(self, model: EpisodicModel, steps: int | None = None,
                 augmentation: Augmentation | None = None):
        super().__init__()
        self.model, self.steps, self.augmentation = model, steps, augmentation
        self.scores = EpisodeScores()
        self.results: dict[str, float] = {}
        self.per_episode: Tensor | None = None

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        # the views of test batch i are a fixed function of i, as its episodes are
        generator = (None if self.augmentation is None
                     else seeded_generator(self.augmentation.views, batch_idx))
        self.scores.update(episode_scores(self.model, batch, self.steps, self.augmentation,
                                          generator))

    def on_test_epoch_end(self) -> None:
        self.results, self.per_episode = self.scores.summary("test", self.model.score_name,
                                                             self.trainer.global_step)
        self.log_dict(self.results, sync_dist=False)
