"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr and Hospedales, CVPR 2018).

The embedding module keeps spatial feature maps. Each class's feature map is the sum of its
support examples' maps (section 3.2, K-shot). A learned relation module scores every (class,
query) pair from the channel-wise concatenation of their maps: two conv blocks, then two fully
connected layers ending in a sigmoid, so a relation score lies in [0, 1] (equation 1). Training
regresses the scores onto one-hot targets with a mean squared error (equation 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.metric import MetricModule
from metalearn.errors import UserError
from metalearn.models.backbones import conv_block


class RelationModule(nn.Module):
    """(class map, query map) concatenated on channels -> relation score in [0, 1]."""

    def __init__(self, feature_shape: tuple[int, int, int], channels: int, hidden_units: int):
        super().__init__()
        in_channels, height, width = feature_shape
        self.layers = nn.Sequential(
            conv_block(2 * in_channels, channels),
            conv_block(channels, channels),
            nn.Flatten(),
            nn.Linear(channels * (height // 4) * (width // 4), hidden_units),
            nn.ReLU(),
            nn.Linear(hidden_units, 1),
            nn.Sigmoid(),
        )

    def forward(self, pairs: Tensor) -> Tensor:
        return self.layers(pairs).squeeze(-1)


class RelationNet(MetricModule):
    """Args:
        backbone: an embedding that returns feature maps: `out_shape` (C, H, W) with H, W >= 4
            (the relation module pools twice) and `flatten=False`. The config sets Conv4 to pool
            in its first two blocks only, as the paper does.
        relation_channels: filters of the relation module's two conv blocks (paper: 64).
        hidden_units: width of its first fully connected layer (paper: 8).
    """

    def __init__(self, backbone: nn.Module, relation_channels: int = 64, hidden_units: int = 8,
                 **base_args):
        super().__init__(backbone, **base_args)
        feature_shape = getattr(backbone, "out_shape", None)
        if feature_shape is None or getattr(backbone, "flatten", True):
            raise UserError(
                "algorithm=relationnet needs a backbone that returns feature maps: one with "
                "backbone.flatten=false (conv4, resnet12, torchvision)"
            )
        if min(feature_shape[1:]) < 4:
            raise UserError(
                f"algorithm=relationnet: the backbone's feature maps are "
                f"{feature_shape[1]}x{feature_shape[2]}, but the relation module pools them twice "
                "and needs at least 4x4; pool less (Conv4: backbone.pooled_blocks=2) or use "
                "larger images"
            )
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.relation = RelationModule(feature_shape, relation_channels, hidden_units)

    def process_support_features(self, support_features: Tensor, support_y: Tensor) -> None:
        super().process_support_features(support_features, support_y)
        self.class_features = self.class_sums()  # [N, C, H, W]

    def score_queries(self, query_features: Tensor) -> Tensor:
        """Relation scores [Q, N] in [0, 1]."""
        num_queries, num_classes = query_features.shape[0], self.class_features.shape[0]
        classes = self.class_features.unsqueeze(0).expand(num_queries, -1, -1, -1, -1)
        queries = query_features.unsqueeze(1).expand(-1, num_classes, -1, -1, -1)
        pairs = torch.cat([classes, queries], dim=2).flatten(0, 1)  # [Q * N, 2C, H, W]
        return self.relation(pairs).view(num_queries, num_classes)

    def task_loss(self, scores: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(scores, F.one_hot(targets, scores.shape[-1]).to(scores.dtype))
