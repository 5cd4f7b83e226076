"""Layers with fast weights: weights generated within a task, added to the slow weights the
optimiser learns across tasks (Meta Networks, Munkhdalai and Yu 2017, section 3.3, layer
augmentation), and the bookkeeping of generating them coordinate by coordinate.

A meta network generates every coordinate of several layers' weights as one flat vector
(`flatten_layers` / `unflatten_layers`); a memory of per-example fast weights is read by
attention (`read_memory`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: one layer's (weight, bias): [out, in] and [out] shared by all rows, or [B, out, in] and [B, out]
#: with one set per row
LayerWeights = tuple[Tensor, Tensor]

ACTIVATIONS = {"relu": F.relu, "identity": lambda x: x}


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """W x + b for every row of x [B, in]: with one weight for all rows ([out, in]) or one per row
    ([B, out, in])."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    return torch.einsum("boi,bi->bo", weight, x) + bias


class AugmentedLinear(nn.Module):
    """A fully connected layer with layer augmentation: act(W x + b) + act(W* x + b*).

    `forward(x, fast)` adds the fast path when fast weights are given; `slow` replaces the layer's
    own slow weights (per-row copies, used to take per-example gradients)."""

    def __init__(self, in_features: int, out_features: int, activation: str = "relu"):
        super().__init__()
        reference = nn.Linear(in_features, out_features)  # nn.Linear's initialisation
        self.weight = nn.Parameter(reference.weight.detach().clone())
        self.bias = nn.Parameter(reference.bias.detach().clone())
        self.activation = activation

    def forward(self, x: Tensor, fast: LayerWeights | None = None,
                slow: LayerWeights | None = None) -> Tensor:
        act = ACTIVATIONS[self.activation]
        weight, bias = slow if slow is not None else (self.weight, self.bias)
        output = act(linear(x, weight, bias))
        if fast is None:
            return output
        return output + act(linear(x, *fast))

    def slow_weights(self) -> LayerWeights:
        return self.weight, self.bias


def flatten_layers(layers: Sequence[LayerWeights], batch_dims: int) -> Tensor:
    """Every coordinate of several layers' weights in one tensor [*batch, P]."""
    return torch.cat([t.flatten(batch_dims) for layer in layers for t in layer], dim=-1)


def unflatten_layers(flat: Tensor, shapes: Sequence[tuple[torch.Size, torch.Size]]
                     ) -> list[LayerWeights]:
    """Inverse of flatten_layers for layers of the given (weight, bias) shapes."""
    batch = flat.shape[:-1]
    sizes = [shape.numel() for pair in shapes for shape in pair]
    pieces = iter(flat.split(sizes, dim=-1))
    return [(next(pieces).reshape(*batch, *w), next(pieces).reshape(*batch, *b))
            for w, b in shapes]


def read_memory(attention: Tensor, memory: Sequence[LayerWeights]) -> list[LayerWeights]:
    """Each query's fast weights a^T M: attention [Q, S] over the memory's per-example weights
    ([S, out, in], [S, out] per layer) gives [Q, out, in], [Q, out] per layer."""
    return [(torch.einsum("qs,soi->qoi", attention, weight), attention @ bias)
            for weight, bias in memory]
