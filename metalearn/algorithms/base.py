"""The episodic Lightning base every algorithm derives from.

It owns what all algorithms share: meta-batches in, the training loss and its logging, per-episode
scores on meta-val and meta-test with their 95% confidence interval, the optimiser, and the check
that stops a run whose loss stops being finite. An algorithm implements two things:

- `meta_train_loss(batch)`: the loss to minimise on a batch of tasks, with the query predictions;
- `adapt(support_x, support_y, steps=None)`: learn one task from its support set and return the
  function that predicts its queries (class scores, or regression outputs). `steps` is the number
  of inner steps of the algorithms that adapt by gradient steps; the others adapt in one pass.

Evaluation, the Python API and the entry points only ever call these, so they never branch on the
algorithm's name.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.aggregation import CatMetric

from metalearn.data.episodes import TaskBatch, seeded_generator
from metalearn.errors import UserError
from metalearn.evaluation.statistics import mean_and_ci95

TASK_TYPES = ("classification", "regression")

#: predicts the queries of the task an algorithm adapted to: query_x -> scores or outputs
Predictor = Callable[[Tensor], Tensor]


class NonFiniteError(UserError):
    """The meta-training loss or a meta-val or meta-test score became NaN or infinite: the run
    stops, with one line like a config mistake, since the fix is a setting (learning rates,
    clipping). Never a result."""


class EpisodicModule(L.LightningModule):
    """Base of every meta-learning algorithm.

    Args:
        task_type: "classification" or "regression" (the runner takes it from the dataset).
        output_dim: classes per task (n_way) for classification, target width for regression.
        outer_lr: learning rate of the outer (meta) optimiser.
        optimizer: factory `params, lr -> Optimizer` (a `_partial_` config); Adam by default.
        scheduler: optional factory `optimizer -> LRScheduler`, stepped every epoch.
    """

    #: task types the algorithm supports; checked before training starts.
    supported_task_types: tuple[str, ...] = ("classification",)
    #: whether meta-training tasks may have another number of classes than test tasks
    #: (False where an output layer has one unit per class).
    supports_other_train_way: bool = False
    #: whether a user's network given to the Python API is the whole learner (with
    #: `output_layer=False`), as for algorithms that adapt a whole network; otherwise it is the
    #: embedding, and the algorithm adds what it needs on top.
    user_network_is_learner: bool = False
    #: whether meta-training is supervised pre-training on batches of meta-train examples with
    #: their class indices (ExampleBatch, of `batch_size` examples) rather than on tasks.
    trains_on_examples: bool = False

    def __init__(
        self,
        task_type: str = "classification",
        output_dim: int = 5,
        outer_lr: float = 1e-3,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
    ):
        super().__init__()
        if task_type not in self.supported_task_types:
            raise ValueError(f"{type(self).__name__} does not support {task_type} tasks")
        self.task_type = task_type
        self.output_dim = output_dim
        self.outer_lr = outer_lr
        self.optimizer_factory = optimizer or torch.optim.Adam
        self.scheduler_factory = scheduler
        #: test-time augmentation: (view, count) scores each test episode by the class
        #: probabilities averaged over `count` views made by view(batch, generator); None: none
        self.test_views: tuple[Callable[[TaskBatch, torch.Generator], TaskBatch], int] | None = None
        # nan_strategy="disable": a diverged episode makes the mean NaN instead of vanishing
        self.episode_scores = {"val": CatMetric(nan_strategy="disable"),
                               "test": CatMetric(nan_strategy="disable")}
        for split, metric in self.episode_scores.items():
            self.add_module(f"{split}_episode_scores", metric)

    # What an algorithm implements -------------------------------------------------------------
    @abstractmethod
    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """(loss averaged over the batch's tasks, query predictions [B, Q, ...])."""

    @abstractmethod
    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        """Learns one task from its support set; returns the function predicting its queries.

        `steps`: inner steps, for the algorithms that adapt by gradient steps (None: their
        `test_inner_steps`); the others adapt in one pass and refuse a number (`one_pass`).
        """

    # Shared ------------------------------------------------------------------------------------
    def adapt_and_predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Adapts to one task's support set and returns its query predictions [Q, ...]."""
        return self.adapt(support_x, support_y)(query_x)

    def one_pass(self, steps: int | None) -> None:
        """For algorithms that adapt in one pass over the support set: refuses a step count."""
        if steps is not None:
            raise UserError(f"{type(self).__name__} adapts in one pass over the support set; "
                            "n_steps applies only to algorithms that adapt by gradient steps")

    @property
    def score_name(self) -> str:
        return "acc" if self.task_type == "classification" else "mse"

    def task_loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        if self.task_type == "classification":
            return F.cross_entropy(predictions, targets)
        return F.mse_loss(predictions, targets)

    def episode_score(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """Accuracy (classification) or mean squared error (regression) per task: [B]."""
        if self.task_type == "classification":
            return (predictions.argmax(-1) == targets).float().flatten(1).mean(1)
        return (predictions - targets).pow(2).flatten(1).mean(1)

    def checked_meta_train_loss(self, batch: TaskBatch, step: int) -> tuple[Tensor, Tensor]:
        """meta_train_loss, stopping the run when the loss is no longer finite."""
        loss, predictions = self.meta_train_loss(batch)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"the meta-training loss became {loss.item()} at step {step}")
        return loss, predictions

    @property
    def validation_metrics(self) -> list[str]:
        """The meta-val scores a run can monitor (`monitor=`)."""
        return [f"val/{self.score_name}"]

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        loss, predictions = self.checked_meta_train_loss(batch, self.global_step)
        score = self.episode_score(predictions.detach(), batch.query_y).mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log(f"train/{self.score_name}", score, prog_bar=True)
        return loss

    def predict_episodes(self, batch: TaskBatch) -> Tensor:
        """Adapts to each task of the batch in turn and predicts its queries: [B, Q, ...]."""
        return torch.stack([self.adapt_and_predict(task.support_x, task.support_y, task.query_x)
                            for task in batch.tasks()])

    def score_episodes(self, batch: TaskBatch, views: int = 1,
                       view: Callable[[TaskBatch, torch.Generator], TaskBatch] | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """Each task's query score [B]; with `views` > 1, from the class probabilities averaged
        over that many views of the batch, view(batch, generator) each (support and query)."""
        if views == 1:
            return self.episode_score(self.predict_episodes(batch), batch.query_y)
        probabilities = sum(self.predict_episodes(view(batch, generator)).softmax(-1)
                            for _ in range(views))
        return self.episode_score(probabilities, batch.query_y)

    def evaluate_episodes(self, batch: TaskBatch, split: str, batch_idx: int = 0) -> None:
        if split == "test" and self.test_views is not None:
            view, count = self.test_views
            # the views of test batch i are a fixed function of i, as its episodes are
            generator = seeded_generator(count, batch_idx)
            scores = self.score_episodes(batch, count, view, generator)
        else:
            scores = self.score_episodes(batch)
        self.episode_scores[split].update(scores)

    def report_episodes(self, split: str) -> dict[str, float]:
        """The mean score of the split's episodes, its 95% interval, and how many were scored."""
        scores = self.episode_scores[split].compute()
        self.episode_scores[split].reset()
        mean, ci95 = mean_and_ci95(scores)
        if not math.isfinite(mean):
            raise NonFiniteError(f"the meta-{split} {self.score_name} became {mean} at step "
                                 f"{self.global_step}")
        results = {f"{split}/{self.score_name}": mean, f"{split}/{self.score_name}_ci95": ci95,
                   f"{split}/episodes": scores.numel()}
        self.log_dict(results, prog_bar=split == "val", sync_dist=False)
        return results

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self.evaluate_episodes(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.report_episodes("val")

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self.evaluate_episodes(batch, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        #: each test episode's score in episode order, for paired comparisons on the same episodes
        self.test_scores_per_episode = self.episode_scores["test"].compute().flatten().cpu()
        self.test_results = self.report_episodes("test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters(), lr=self.outer_lr)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
