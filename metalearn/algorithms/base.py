"""The episodic Lightning base every algorithm derives from.

It owns what all algorithms share: meta-batches in, the training loss and its logging, meta-val
scores with their 95% confidence interval (scored by the evaluation protocol,
metalearn/evaluation/protocol.py, which also runs the meta-test), the optimiser, and the check
that stops a run whose loss stops being finite. An algorithm implements two things:

- `meta_train_loss(batch)`: the loss to minimise on a batch of tasks, with the query predictions;
- `adapt(support_x, support_y, steps=None)`: learn one task from its support set and return the
  function that predicts its queries (class scores, or regression outputs). `steps` is the number
  of inner steps of the algorithms that adapt by gradient steps; the others adapt in one pass.

Evaluation, the Python API and the entry points only ever call these (and `predict_episodes`,
which adapts to a batch of tasks, one by one unless an algorithm batches them), so they never
branch on the algorithm's name. An algorithm may report more per-episode scores beside its own
(`extra_episode_scores`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from metalearn.data.episodes import TaskBatch
from metalearn.errors import NonFiniteError, UserError
from metalearn.evaluation.protocol import EpisodeScores, episode_scores, numbers_only

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from metalearn.data.datamodule import EpisodicDataModule

TASK_TYPES = ("classification", "regression")

#: predicts the queries of the task an algorithm adapted to: query_x -> scores or outputs
Predictor = Callable[[Tensor], Tensor]


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
    #: whether the algorithm adapts by a number of gradient steps (`adapt(..., steps)`), which
    #: evaluation can vary (eval.inner_steps); the others adapt in one pass.
    adapts_by_steps: bool = False
    #: whether meta-training is supervised pre-training on batches of meta-train examples with
    #: their class indices (ExampleBatch, from its `training_stream`) rather than on tasks.
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
        self.val_scores = EpisodeScores()

    def training_stream(self, data: EpisodicDataModule, rank: int = 0,
                        world_size: int = 1) -> Dataset:
        """What meta-training steps take, item i for step i (this process's share: `rank` of
        `world_size`), asked of the data module when fitting starts: batches of tasks."""
        return data.task_stream(rank, world_size)

    # What an algorithm implements -------------------------------------------------------------
    @abstractmethod
    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """(loss averaged over the batch's tasks, query predictions [B, Q, ...])."""

    @abstractmethod
    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        """Learns one task from its support set; returns the function predicting its queries.

        `steps`: inner steps, for the algorithms that adapt by gradient steps (None: their
        `test_inner_steps`); the others adapt in one pass and refuse a number
        (`refuse_inner_steps`).
        """

    # Shared ------------------------------------------------------------------------------------
    def adapt_and_predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Adapts to one task's support set and returns its query predictions [Q, ...]."""
        return self.adapt(support_x, support_y)(query_x)

    def refuse_inner_steps(self, steps: int | None) -> None:
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

    def predict_episodes(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Adapts to each task of the batch in turn and predicts its queries: [B, Q, ...]."""
        return torch.stack([self.adapt(task.support_x, task.support_y, steps)(task.query_x)
                            for task in batch.tasks()])

    def extra_episode_scores(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Per-episode scores [B] the algorithm reports beside its own, by name (none here);
        evaluation reports each one's mean and 95% interval as `<split>/<name>`."""
        return {}

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self.val_scores.update(episode_scores(self, batch))

    @property
    def target_scale(self) -> float:
        """The factor by which the data divided regression targets (1.0: none): the meta-val
        MSE is reported in the targets' own units, as the meta-test MSE is."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        return getattr(getattr(datamodule, "tasks", None), "target_scale", 1.0)

    def on_validation_epoch_end(self) -> None:
        # numbers only: one validation episode has no interval
        results = numbers_only(self.val_scores.summary(
            "val", self.score_name, self.global_step, self.target_scale ** 2)[0])
        own = {key: results[key] for key in
               (f"val/{self.score_name}", f"val/{self.score_name}_ci95", "val/episodes")
               if key in results}
        self.log_dict(own, prog_bar=True, sync_dist=False)
        self.log_dict({key: value for key, value in results.items() if key not in own},
                      sync_dist=False)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The outer optimiser over the module's weights. A module with none (a frozen
        pretrained encoder under an algorithm without weights of its own) is refused in one
        line: there is nothing to meta-train."""
        parameters = list(self.parameters())
        if not parameters:
            raise UserError(f"{type(self).__name__} with this backbone has no weights to "
                            "meta-train (its encoder is frozen: backbone.freeze=true); set "
                            "backbone.freeze=false to fine-tune it")
        return self.optimizer_factory(parameters, lr=self.outer_lr)

    def configure_optimizers(self):
        optimizer = self.make_optimizer()
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
