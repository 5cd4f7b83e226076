"""Shared shape of the metric-learning methods, after easyfsl's FewShotClassifier.

A method embeds images with its backbone, learns what it needs from the support set in
`process_support_features` (the base keeps the support features and their one-hot labels;
Prototypical and Relation Networks add class prototypes and class feature maps), and scores
queries against it in `score_queries`. The public pair `process_support_set(support_x,
support_y)` then `forward(query_x)` is built from those two, and so are training and evaluation.
During meta-training, support and query go through the backbone in one pass, so BatchNorm sees
the whole episode, as in the original implementations.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.base import EpisodicModule, Predictor
from metalearn.data.episodes import TaskBatch


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """The cosine similarity of every row of a [A, D] with every row of b [B, D]: [A, B]."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


class MetricModule(EpisodicModule):
    """Base of Prototypical, Matching, Relation and Siamese networks."""

    supports_other_train_way = True

    def __init__(self, backbone: nn.Module, **base_args):
        super().__init__(**base_args)
        self.backbone = backbone
        self.support_features: Tensor | None = None  # [S, ...]
        self.support_one_hot: Tensor | None = None  # [S, N]

    def embed(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def process_support_features(self, support_features: Tensor, support_y: Tensor) -> None:
        """Stores what the support set teaches: its features and one-hot labels here; methods
        extend it (prototypes, class feature maps, full-context embeddings)."""
        self.support_features = support_features
        self.support_one_hot = F.one_hot(support_y).to(support_features.dtype)

    def class_sums(self) -> Tensor:
        """The sum of each class's support features: [N, *feature shape]."""
        sums = self.support_one_hot.T @ self.support_features.flatten(1)
        return sums.view(-1, *self.support_features.shape[1:])

    @abstractmethod
    def score_queries(self, query_features: Tensor) -> Tensor:
        """Class scores [Q, N] for embedded queries, higher meaning more likely."""

    def process_support_set(self, support_x: Tensor, support_y: Tensor) -> None:
        self.process_support_features(self.embed(support_x), support_y)

    def forward(self, query_x: Tensor) -> Tensor:
        return self.score_queries(self.embed(query_x))

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        self.refuse_inner_steps(steps)
        support_features = self.embed(support_x)

        def predict(query_x: Tensor) -> Tensor:
            # processed again at each call: another task may have been adapted to meanwhile
            self.process_support_features(support_features, support_y)
            return self(query_x)

        return predict

    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        losses, predictions = [], []
        for task in batch.tasks():
            n_support = task.support_x.shape[0]
            features = self.embed(torch.cat([task.support_x, task.query_x]))
            self.process_support_features(features[:n_support], task.support_y)
            loss, scores = self.query_loss(features[n_support:], task.query_y, task.support_y)
            losses.append(loss)
            predictions.append(scores)
        return torch.stack(losses).mean(), torch.stack(predictions)

    def query_loss(self, query_features: Tensor, query_y: Tensor,
                   support_y: Tensor) -> tuple[Tensor, Tensor]:
        """The training loss of one task's queries, and their class scores [Q, N]."""
        scores = self.score_queries(query_features)
        return self.task_loss(scores, query_y), scores
