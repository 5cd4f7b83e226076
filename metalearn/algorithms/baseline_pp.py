"""Baseline++ (Chen, Liu, Kira, Wang and Huang, "A Closer Look at Few-shot Classification",
ICLR 2019, section 3.2).

Baseline with a cosine-similarity classifier, in pre-training and for each new task: a class's
score is the cosine of the (L2-normalised) features with the class's weight vector, times a scale.
As in the authors' code (`backbone.distLinear`), the weights are weight-normalised with a learned
norm per class (which multiplies the cosine), and the scale is fixed: 2 for at most 200 classes,
10 for more (Omniglot's thousands of pre-training classes need the larger one). `scale` sets one
value for both classifiers instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.baseline import Baseline

#: the authors' fixed scales: (most classes for the small scale, small scale, large scale)
SCALE_RULE = (200, 2.0, 10.0)
#: added to the features' norms before dividing, as in the authors' code
NORM_EPSILON = 1e-5


def reference_scale(classes: int) -> float:
    most, small, large = SCALE_RULE
    return small if classes <= most else large


def cosine_scores(features: Tensor, direction: Tensor, norm: Tensor, scale: float) -> Tensor:
    """scale * norm_c * cos(features, direction_c): features [..., M, D], direction [..., N, D],
    norm [..., N] -> [..., M, N]."""
    unit_features = features / (features.norm(dim=-1, keepdim=True) + NORM_EPSILON)
    weight = norm.unsqueeze(-1) * F.normalize(direction, dim=-1)
    return scale * unit_features @ weight.transpose(-1, -2)


class CosineClassifier(nn.Module):
    """The pre-training classifier: nn.Linear's weights, weight-normalised per class."""

    def __init__(self, features: int, classes: int, scale: float):
        super().__init__()
        linear = nn.Linear(features, classes, bias=False)
        self.direction = nn.Parameter(linear.weight.detach())
        self.norm = nn.Parameter(linear.weight.detach().norm(dim=1))  # weight norm's start
        self.scale = scale

    def forward(self, features: Tensor) -> Tensor:
        return cosine_scores(features, self.direction, self.norm, self.scale)


class BaselinePP(Baseline):
    """Args:
        scale: multiplies the cosines of both classifiers; null: the authors' rule (above).
    """

    def __init__(self, backbone: nn.Module, train_classes: int, scale: float | None = None,
                 **baseline_args):
        self.scale = scale
        super().__init__(backbone, train_classes, **baseline_args)

    def head_scale(self, classes: int) -> float:
        return self.scale or reference_scale(classes)

    def pretraining_classifier(self, features: int, classes: int) -> nn.Module:
        return CosineClassifier(features, classes, self.head_scale(classes))

    def initial_heads(self, tasks: int, n_way: int, features: int,
                      generator: torch.Generator) -> list[Tensor]:
        """Weight-normalised nn.Linear weights: [direction [B, N, D], norm [B, N]]."""
        bound = 1 / math.sqrt(features)
        direction = torch.empty(n_way, features).uniform_(-bound, bound, generator=generator)
        return [direction.expand(tasks, -1, -1), direction.norm(dim=1).expand(tasks, -1)]

    def head_scores(self, head: list[Tensor], features: Tensor) -> Tensor:
        direction, norm = head
        return cosine_scores(features, direction, norm, self.head_scale(norm.shape[-1]))
