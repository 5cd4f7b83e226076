"""ResNet-12, the few-shot embedding of most results since 2019, with optional DropBlock.

The network of Lee et al. 2019 (MetaOptNet) and Tian et al. 2020 (RFS), after Oreshkin et al.
2018 (TADAM) and Mishra et al. 2018 (SNAIL): four residual blocks of three 3x3 convolutions, then
global average pooling. Written after reading MetaOptNet's models/ResNet12_embedding.py and RFS's
models/resnet.py, which have the same layers (12,424,320 parameters at 64-160-320-640).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.errors import UserError, check_whole_number
from metalearn.models.backbones import max_blocks


class DropBlock(nn.Module):
    """DropBlock (Ghiasi, Lin and Le, NeurIPS 2018): zeroes `block_size` x `block_size` squares
    of each feature map in training, then rescales what is kept so the batch mean is unchanged;
    the identity in eval mode.

    Block positions are drawn with the paper's gamma, so that about `drop_rate` of the positions
    are dropped: gamma = drop_rate / block_size^2 * H W / ((H - block_size + 1)(W - block_size + 1)).
    Blocks lie wholly inside the map, as in MetaOptNet's implementation. Changes from it: the
    drop rate is fixed instead of ramped up over the first 40,000 forward passes (a schedule
    tied to its own training length, which also counted validation passes), and a map smaller
    than the block is dropped in squares of the map's size instead of failing.
    """

    def __init__(self, drop_rate: float, block_size: int):
        super().__init__()
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0:
            return x
        height, width = x.shape[-2:]
        size = min(self.block_size, height, width)
        seeds_shape = (*x.shape[:2], height - size + 1, width - size + 1)
        gamma = self.drop_rate / size**2 * height * width / (seeds_shape[2] * seeds_shape[3])
        seeds = (torch.rand(seeds_shape, device=x.device) < gamma).float()
        # a seed at (i, j) drops the square [i, i + size) x [j, j + size)
        dropped = F.max_pool2d(F.pad(seeds, [size - 1] * 4), size, stride=1)
        keep = 1 - dropped
        scale = keep.numel() / keep.sum().clamp(min=1)  # clamp: all dropped gives 0, not NaN
        return x * (keep * scale).to(x.dtype)


class ResidualBlock(nn.Module):
    """3 x [conv3x3, BatchNorm, LeakyReLU(0.1)] with a conv1x1 + BatchNorm shortcut added before
    the last activation, then a 2x2 max-pool and, optionally, DropBlock."""

    def __init__(self, in_channels: int, out_channels: int, drop: nn.Module | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(3):
            layers += [
                nn.Conv2d(in_channels if index == 0 else out_channels, out_channels,
                          kernel_size=3, padding=1, bias=False),  # BatchNorm has the bias
                nn.BatchNorm2d(out_channels),
            ]
            if index < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.layers = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.BatchNorm2d(out_channels))
        self.activation = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.drop = drop if drop is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.pool(self.activation(self.layers(x) + self.shortcut(x))))


class ResNet12(nn.Module):
    """ResNet-12 (Lee et al. 2019; Tian et al. 2020): 640 features after global average pooling.

    One residual block per entry of `channels`, each halving the feature maps; on 84x84
    mini-ImageNet the last maps are 640 x 5 x 5, on 32x32 CIFAR-FS 640 x 2 x 2, on 28x28 Omniglot
    640 x 1 x 1. The first block takes the data's channels, so 1-channel images need no change.
    With `flatten=False` the last maps are returned (`out_shape`) instead of their average, and
    `out_features` is their flattened size, as Conv4's.

    Changes from the reference implementations: no dropout in the first two blocks (they apply
    it when DropBlock is on), and DropBlock's rate is fixed (see DropBlock).

    Args:
        channels: filters of each block (default 64-160-320-640, the published network).
        drop_block: DropBlock in the last two blocks, as MetaOptNet and RFS train on
            mini-ImageNet.
        drop_rate: the share of positions DropBlock drops (MetaOptNet, RFS: 0.1).
        drop_block_size: side of the dropped squares (MetaOptNet: 5 on mini-ImageNet, 2 on
            CIFAR-FS and FC100, whose last maps are 2x2).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        channels: tuple[int, ...] = (64, 160, 320, 640),
        drop_block: bool = False,
        drop_rate: float = 0.1,
        drop_block_size: int = 5,
        flatten: bool = True,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise UserError(f"backbone=resnet12 takes images [C, H, W]; this dataset's inputs "
                            f"have shape {tuple(input_shape)}")
        channels = tuple(channels)
        if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                                   for c in channels):
            raise UserError(f"backbone.channels={list(channels)} must be a non-empty list of "
                            "whole numbers >= 1, one per residual block")
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) \
                or not 0 <= drop_rate < 1:
            raise UserError(f"backbone.drop_rate={drop_rate!r} must be a number in [0, 1)")
        check_whole_number("backbone.drop_block_size", drop_block_size)
        in_channels, height, width = input_shape
        if min(height, width) >> len(channels) < 1:
            raise UserError(
                f"backbone.channels={list(channels)} makes {len(channels)} blocks, each halving "
                f"the maps, which takes the {height}x{width} input below one pixel; give at most "
                f"{max_blocks(input_shape)} channels"
            )
        blocks = []
        for index, (a, b) in enumerate(pairwise((in_channels, *channels))):
            use_drop_block = drop_block and index >= len(channels) - 2
            blocks.append(ResidualBlock(
                a, b, DropBlock(drop_rate, drop_block_size) if use_drop_block else None))
        self.blocks = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # the references' initialisation
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
        self.flatten = flatten
        self.out_shape = (channels[-1], height >> len(channels), width >> len(channels))
        self.out_features = channels[-1] if flatten else (
            self.out_shape[0] * self.out_shape[1] * self.out_shape[2])

    def forward(self, x: Tensor) -> Tensor:
        features = self.blocks(x)
        return features.mean(dim=(2, 3)) if self.flatten else features
