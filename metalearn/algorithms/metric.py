"""Shared shape of the metric-learning methods, after easyfsl's FewShotClassifier.

A method embeds images with its backbone, learns what it needs from the support set in
`process_support_features`, and scores queries against it in `score_queries`. The public pair
`process_support_set(support_x, support_y)` then `forward(query_x)` is built from those two, and
so are training and evaluation. During meta-training, support and query go through the backbone
in one pass, so BatchNorm sees the whole episode, as in the original implementations.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from metalearn.algorithms.base import EpisodicModule
from metalearn.data.episodes import Episode


class MetricModule(EpisodicModule):
    """Base of Prototypical, Matching, Relation and Siamese networks."""

    supports_other_train_way = True

    def __init__(self, backbone: nn.Module, **base_args):
        super().__init__(**base_args)
        self.backbone = backbone

    def embed(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    @abstractmethod
    def process_support_features(self, support_features: Tensor, support_y: Tensor) -> None:
        """Stores what the support set teaches (prototypes, support embeddings, ...)."""

    @abstractmethod
    def score_queries(self, query_features: Tensor) -> Tensor:
        """Class scores [Q, N] for embedded queries, higher meaning more likely."""

    def process_support_set(self, support_x: Tensor, support_y: Tensor) -> None:
        self.process_support_features(self.embed(support_x), support_y)

    def forward(self, query_x: Tensor) -> Tensor:
        return self.score_queries(self.embed(query_x))

    def adapt_and_predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        self.process_support_set(support_x, support_y)
        return self(query_x)

    def meta_train_loss(self, batch: Episode) -> tuple[Tensor, Tensor]:
        losses, predictions = [], []
        for task in map(batch.task, range(batch.num_tasks)):
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
