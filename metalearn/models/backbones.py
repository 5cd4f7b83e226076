"""Feature extractors shared by the algorithms.

Every backbone takes the data's `input_shape` (the runner passes it from the dataset) and exposes
`out_features`, the width of the flat feature vector it returns, so heads can be sized without a
dummy forward pass. A user's own network becomes a backbone through `UserBackbone`, which measures
it once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from metalearn.errors import UserError


def conv_block(in_channels: int, out_channels: int, pool: bool = True) -> nn.Sequential:
    """conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool, the block of Vinyals et al. 2016."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2) if pool else nn.Identity(),
    )


def max_blocks(input_shape: tuple[int, int, int]) -> int:
    return int(math.log2(min(input_shape[1:])))


class Conv4(nn.Module):
    """The standard few-shot embedding: `num_blocks` conv blocks of `hidden_channels` filters.

    On 28x28 Omniglot the output is 64 features (1x1 spatial), on 84x84 mini-ImageNet 1600.
    With `flatten=False` the spatial feature maps are returned (Relation Networks need them);
    `pooled_blocks` (default: all) lets only the first blocks pool, which keeps larger maps
    (Sung et al. 2018 pool in the first two of four: 64 maps of 7x7 on Omniglot).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        hidden_channels: int = 64,
        num_blocks: int = 4,
        flatten: bool = True,
        pooled_blocks: int | None = None,
    ):
        super().__init__()
        in_channels, height, width = input_shape
        pooled_blocks = num_blocks if pooled_blocks is None else pooled_blocks
        if not 0 <= pooled_blocks <= num_blocks:
            raise UserError(f"backbone.pooled_blocks={pooled_blocks} must be between 0 and "
                            f"backbone.num_blocks={num_blocks}")
        channels = [in_channels] + [hidden_channels] * num_blocks
        self.blocks = nn.Sequential(*(
            conv_block(a, b, pool=index < pooled_blocks)
            for index, (a, b) in enumerate(pairwise(channels))
        ))
        self.flatten = flatten
        for _ in range(pooled_blocks):
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise UserError(
                f"backbone.num_blocks={num_blocks} with {pooled_blocks} pooling blocks halves the "
                f"{input_shape[1]}x{input_shape[2]} input below one pixel; pool at most "
                f"{max_blocks(input_shape)} times"
            )
        self.out_shape = (hidden_channels, height, width)
        self.out_features = hidden_channels * height * width

    def forward(self, x: Tensor) -> Tensor:
        features = self.blocks(x)
        return features.flatten(1) if self.flatten else features


class MLP(nn.Module):
    """Fully connected ReLU network; the MAML paper's sinusoid learner uses hidden_sizes=[40, 40].

    Categorical columns fed as integer codes (a feature table's
    dataset.categorical_encoding=embedding) are the last len(`categories`) inputs, `categories`
    holding each one's number of levels (the build passes the dataset's): each code is looked up
    in its own nn.Embedding and the vectors replace the codes before the first Linear layer (the
    entity embeddings of Guo & Berkhahn 2016). `embedding_dim`: the width of every embedding,
    or None for fastai's rule, min(600, round(1.6 * levels ** 0.56)) (3 for 3 levels, 19 for
    86). The forward pass is indexing, lookups and a concatenation: pure, so MAML's
    functional_call and vmap adapt the embeddings with the rest.
    """

    def __init__(self, input_shape: tuple[int, ...], hidden_sizes: tuple[int, ...] = (40, 40),
                 categories: Sequence[int] = (), embedding_dim: int | None = None):
        super().__init__()
        inputs = math.prod(input_shape)
        if len(categories) > inputs:
            raise UserError(f"{len(categories)} categorical columns are more than the "
                            f"{inputs} inputs of shape {tuple(input_shape)}")
        if embedding_dim is not None and embedding_dim < 1:
            raise UserError(f"backbone.embedding_dim={embedding_dim} must be a whole number >= 1 "
                            "(or null for a width by the number of levels)")
        widths = [embedding_dim or min(600, round(1.6 * levels ** 0.56)) for levels in categories]
        self.embeddings = nn.ModuleList(nn.Embedding(levels, width)
                                        for levels, width in zip(categories, widths))
        sizes = [inputs - len(categories) + sum(widths)] + list(hidden_sizes)
        layers: list[nn.Module] = []
        for a, b in pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.layers = nn.Sequential(nn.Flatten(), *layers)
        self.out_features = sizes[-1]

    def forward(self, x: Tensor) -> Tensor:
        if self.embeddings:
            x = x.flatten(1)
            numbers, codes = x[:, :-len(self.embeddings)], x[:, -len(self.embeddings):].long()
            x = torch.cat([numbers, *(embedding(codes[:, index])
                                      for index, embedding in enumerate(self.embeddings))], dim=1)
        return self.layers(x)


class UserBackbone(nn.Module):
    """A user's `nn.Module` (the Python API's `model=`) as a backbone.

    Its output width is measured once on a batch of zeros of the data's `input_shape`, so a
    mismatch is reported before training. Outputs of more than one dimension per example are
    flattened unless `flatten=False` (the relation module needs feature maps [C, H, W]).

    Args:
        model: the network. In a config, its class name: such a config is rebuilt only with the
            network passed in again (`MetaLearner.load(path, model=...)`).
    """

    def __init__(self, model: nn.Module | str, input_shape: tuple[int, ...], flatten: bool = True):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise UserError(f"this model was trained with a user-defined network ({model}); "
                            "rebuild it in Python with MetaLearner.load(path, model=<that network>)")
        self.model, self.flatten = model, flatten
        parameter = next(model.parameters(), None)
        dummy = torch.zeros(2, *input_shape, device=None if parameter is None else parameter.device)
        was_training = model.training
        try:
            with torch.no_grad():
                output = model.eval()(dummy)
        except Exception as error:  # whatever the user's forward raises
            raise UserError(f"model {type(model).__name__} cannot take a batch of inputs of shape "
                            f"{tuple(input_shape)}, the dataset's: {error}") from None
        finally:
            model.train(was_training)
        if not isinstance(output, Tensor) or output.dim() < 2:
            raise UserError(f"model {type(model).__name__} must return a tensor [batch, ...] of "
                            "features; it returned "
                            f"{tuple(output.shape) if isinstance(output, Tensor) else type(output)}")
        self.out_shape = tuple(output.shape[1:])
        self.out_features = math.prod(self.out_shape)

    def forward(self, x: Tensor) -> Tensor:
        features = self.model(x)
        return features.flatten(1) if self.flatten else features
