"""The base of the fine-tuning baselines: Baseline and Baseline++ (Chen, Liu, Kira, Wang and
Huang, "A Closer Look at Few-shot Classification", ICLR 2019) and RFS (Tian, Wang, Krishnan,
Tenenbaum and Isola, "Rethinking Few-Shot Image Classification", ECCV 2020).

None of them is meta-learned. The backbone and a classifier over all meta-train classes are trained
as an ordinary classifier, on batches of meta-train examples with their class indices (the
`training_stream` it asks of the data module: the dataset's labelled examples); a new task is then learned by a classifier fitted to the
frozen backbone's features of its support set. Meta-val and meta-test are the fixed episodes every
other algorithm is scored on, so tables compare like with like.

A subclass says which classifier pre-training uses (`pretraining_classifier`) and how a task's
classifier is fitted (`fit_classifiers`), for a batch of tasks at once: evaluation fits the tasks
of a test batch together, and the Python API's `adapt` a batch of one.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.base import EpisodicModule, Predictor
from metalearn.data.datamodule import EpisodicDataModule, ExampleStream
from metalearn.data.episodes import ExampleBatch, TaskBatch
from metalearn.errors import UserError

#: a fitted classifier of a batch of tasks: query features [B, Q, D] -> class scores [B, Q, N]
Classifiers = Callable[[Tensor], Tensor]


class FineTuningModule(EpisodicModule):
    """Args:
        backbone: the network whose features the classifiers take.
        train_classes: the number of meta-train classes (passed by the builder).
        batch_size: meta-train examples per pre-training step.
    """

    trains_on_examples = True
    supports_other_train_way = True  # pre-training knows no tasks; any test shape will do

    def __init__(self, backbone: nn.Module, train_classes: int, batch_size: int = 64,
                 **base_args):
        super().__init__(**base_args)
        self.backbone = backbone
        self.batch_size = batch_size
        self.classifier = self.pretraining_classifier(backbone.out_features, train_classes)

    # What a fine-tuning baseline implements -------------------------------------------------
    @abstractmethod
    def pretraining_classifier(self, features: int, classes: int) -> nn.Module:
        """The classifier over all meta-train classes trained with the backbone."""

    @abstractmethod
    def fit_classifiers(self, support_features: Tensor, support_y: Tensor) -> Classifiers:
        """Fits one classifier per task to its support features [B, S, D] and labels [B, S]."""

    def task_features(self, x: Tensor) -> Tensor:
        """The features a task's classifier is fitted on and applied to: the backbone's."""
        return self.backbone(x)

    # Shared ----------------------------------------------------------------------------------
    def meta_train_loss(self, batch: ExampleBatch) -> tuple[Tensor, Tensor]:
        """Cross-entropy over all meta-train classes, and the class scores."""
        scores = self.classifier(self.backbone(batch.x))
        return F.cross_entropy(scores, batch.y), scores

    def training_stream(self, data: EpisodicDataModule, rank: int = 0,
                        world_size: int = 1) -> ExampleStream:
        return data.example_stream(self.batch_size, rank, world_size)

    def training_step(self, batch: ExampleBatch, batch_idx: int) -> Tensor:
        if isinstance(batch, TaskBatch):
            raise UserError(f"{type(self).__name__} pre-trains on meta-train examples with their "
                            "classes, not on tasks; its training steps take batches of examples, "
                            "not a batch of tasks")
        loss, scores = self.checked_meta_train_loss(batch, self.global_step)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (scores.detach().argmax(-1) == batch.y).float().mean(),
                 prog_bar=True)
        return loss

    @contextmanager
    def frozen_backbone(self) -> Iterator[None]:
        """The backbone as test time uses it: BatchNorm on its running averages, no gradients."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.backbone.train(was_training)

    def batch_features(self, x: Tensor) -> Tensor:
        """Task features of a batch of tasks' inputs [B, M, ...], in float32 (a task's classifier
        is fitted in full precision under mixed precision too): [B, M, D]."""
        with self.frozen_backbone():
            features = self.task_features(x.flatten(0, 1))
        return features.float().view(*x.shape[:2], -1)

    def fitted(self, support_features: Tensor, support_y: Tensor) -> Classifiers:
        """fit_classifiers in full precision, with gradients (also where Lightning evaluates
        without them); the classifiers it returns score in full precision too."""
        device = support_features.device.type
        with torch.enable_grad(), torch.autocast(device, enabled=False):
            classify = self.fit_classifiers(support_features, support_y)

        def full_precision(query_features: Tensor) -> Tensor:
            with torch.autocast(device, enabled=False):
                return classify(query_features)

        return full_precision

    def predict_episodes(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Fits the classifiers of the batch's tasks together: [B, Q, N]."""
        self.refuse_inner_steps(steps)
        classify = self.fitted(self.batch_features(batch.support_x), batch.support_y)
        return classify(self.batch_features(batch.query_x))

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        self.refuse_inner_steps(steps)
        classify = self.fitted(self.batch_features(support_x[None]), support_y[None])
        return lambda query_x: classify(self.batch_features(query_x[None]))[0]
