"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr and Hospedales, CVPR 2018).

The embedding module keeps spatial feature maps. Each class's feature map is the sum of its
support examples' maps (section 3.2, K-shot). A learned relation module scores every (class,
query) pair from the channel-wise concatenation of their maps: two conv blocks, then two fully
connected layers ending in a sigmoid, so a relation score lies in [0, 1] (equation 1). Training
regresses the scores onto one-hot targets with a mean squared error (equation 2).

A backbone that returns vectors and has no feature maps to give (an MLP on a feature table, a
text encoder) gets the fully connected relation module of the paper's zero-shot networks
(section 3.4) instead: the concatenated pair through two ReLU layers, of `relation_channels`
then `hidden_units` units, to the sigmoid.
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


class VectorRelationModule(RelationModule):
    """(class vector, query vector) concatenated -> relation score in [0, 1], for backbones
    without feature maps."""

    def __init__(self, features: int, channels: int, hidden_units: int):
        nn.Module.__init__(self)
        self.layers = nn.Sequential(
            nn.Linear(2 * features, channels), nn.ReLU(),
            nn.Linear(channels, hidden_units), nn.ReLU(),
            nn.Linear(hidden_units, 1), nn.Sigmoid(),
        )


class RelationNet(MetricModule):
    """Args:
        backbone: an embedding that returns feature maps: `out_shape` (C, H, W) with H, W >= 4
            (the relation module pools twice) and `flatten=False`. The config sets Conv4 to pool
            in its first two blocks only, as the paper does. A backbone that has no feature maps
            (no `flatten` setting: an MLP, a text encoder) is compared by vectors.
        relation_channels: filters of the relation module's two conv blocks (paper: 64).
        hidden_units: width of its first fully connected layer (paper: 8).
    """

    def __init__(self, backbone: nn.Module, relation_channels: int = 64, hidden_units: int = 8,
                 **base_args):
        super().__init__(backbone, **base_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        if not hasattr(backbone, "flatten"):  # vectors only
            self.relation = VectorRelationModule(backbone.out_features, relation_channels,
                                                 hidden_units)
            return
        feature_shape = getattr(backbone, "out_shape", None)
        if feature_shape is None or backbone.flatten:
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
        self.relation = RelationModule(feature_shape, relation_channels, hidden_units)

    def process_support_features(self, support_features: Tensor, support_y: Tensor) -> None:
        super().process_support_features(support_features, support_y)
        self.class_features = self.class_sums()  # [N, C, H, W] or [N, D]

    def score_queries(self, query_features: Tensor) -> Tensor:
        """Relation scores [Q, N] in [0, 1]."""
        num_queries, num_classes = query_features.shape[0], self.class_features.shape[0]
        feature_dims = (-1,) * (query_features.dim() - 1)
        classes = self.class_features.unsqueeze(0).expand(num_queries, -1, *feature_dims)
        queries = query_features.unsqueeze(1).expand(-1, num_classes, *feature_dims)
        pairs = torch.cat([classes, queries], dim=2).flatten(0, 1)  # [Q * N, 2C, H, W] / [., 2D]
        return self.relation(pairs).view(num_queries, num_classes)

    def task_loss(self, scores: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(scores, F.one_hot(targets, scores.shape[-1]).to(scores.dtype))
