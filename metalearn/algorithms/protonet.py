"""Prototypical Networks (Snell, Swersky and Zemel, NeurIPS 2017).

Each class is represented by its prototype, the mean embedding of its support examples
(equation 1); a query's class scores are the negative squared euclidean distances to the
prototypes (equation 2, with the softmax in the loss). `distance="cosine"` scores with cosine
similarity instead, scaled by a learned temperature, since raw cosines in [-1, 1] make the softmax
too flat to train (a common variant, not in the paper). `embedding_dim` adds a linear projection
of the backbone's features to that width; left unset, the backbone's features are the embedding,
as in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metalearn.algorithms.metric import MetricModule, cosine_similarity
from metalearn.errors import UserError

DISTANCES = ("euclidean", "cosine")


class ProtoNet(MetricModule):
    def __init__(self, backbone: nn.Module, distance: str = "euclidean",
                 embedding_dim: int | None = None, **base_args):
        super().__init__(backbone, **base_args)
        if distance not in DISTANCES:
            raise UserError(f"algorithm.distance={distance!r} is not one of: {', '.join(DISTANCES)}")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.distance = distance
        self.projection = (
            nn.Identity() if embedding_dim is None else nn.Linear(backbone.out_features, embedding_dim)
        )
        # exp(log_scale) multiplies cosine similarities; unused for the euclidean distance.
        self.log_scale = nn.Parameter(torch.tensor(2.3)) if distance == "cosine" else None
        self.prototypes: Tensor | None = None

    def embed(self, x: Tensor) -> Tensor:
        return self.projection(self.backbone(x))

    def process_support_features(self, support_features: Tensor, support_y: Tensor) -> None:
        super().process_support_features(support_features, support_y)
        # each class's mean support embedding
        self.prototypes = self.class_sums() / self.support_one_hot.sum(0).unsqueeze(1)

    def score_queries(self, query_features: Tensor) -> Tensor:
        if self.distance == "euclidean":
            differences = query_features.unsqueeze(1) - self.prototypes.unsqueeze(0)
            return -differences.pow(2).sum(-1)
        return self.log_scale.exp() * cosine_similarity(query_features, self.prototypes)
