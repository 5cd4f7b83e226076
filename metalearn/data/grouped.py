"""Regression tasks that are groups of rows: a table's groups (a county's homes, a school's
pupils, a machine's measurements; metalearn/data/features.py) or a MovieLens user's ratings
(metalearn/data/movielens.py).

A task is one group: K support rows to adapt from and Q query rows to predict, distinct rows of
the group, drawn without replacement; groups, never rows, are split between meta-train, meta-val
and meta-test, so a test task is a new group. Only groups of at least K + Q rows can give a task:
`check_fits` counts and names how many each split leaves out at the shapes asked for, and refuses
a split left with none.

The rows of every episode come from `episode_rows`, which `sample` gathers, so the classical
baselines (metalearn/evaluation/classical.py) score exactly the learners' episodes from the same
generator. Targets are standardised for learning (learning rates then suit any units);
`episode_metrics` reports the absolute and root-mean-square errors in the original units.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from metalearn.data.episodes import TaskBatch, TaskShape, gather
from metalearn.data.task_family import EpisodeSettings, TaskFamily
from metalearn.errors import UserError

log = logging.getLogger(__name__)


class GroupedRows(NamedTuple):
    """One split's rows, group by group: group g's rows are [offsets[g], offsets[g + 1]).

    `features` [rows, f] float32 and `targets` [rows, 1] float32 as the learners see them
    (encoded, standardised); `names` names the groups; `items` [rows], where rows are ratings of
    items (movies), is each row's item, indexed alike in every split (None otherwise).
    """

    features: Tensor
    targets: Tensor
    offsets: Tensor
    names: tuple[str, ...]
    items: Tensor | None = None

    @property
    def num_groups(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> Tensor:
        """The rows of each group: [groups]."""
        return self.offsets.diff()

    def group_of_rows(self) -> Tensor:
        """Each row's group index: [rows]."""
        return torch.repeat_interleave(torch.arange(self.num_groups), self.counts)


class RowsByGroup:
    """What a family whose splits are GroupedRows offers beside its tasks (`splits`,
    `names_of_features`): the rows of each split, the features' names and the groups' names."""

    splits: dict[str, GroupedRows]
    names_of_features: tuple[str, ...]

    def rows(self, split: str) -> GroupedRows:
        return self.splits[split]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.names_of_features

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].features.shape[1:])

    def split_record(self) -> dict[str, list[str]]:
        """The groups (tasks: a table's groups, users) of each split, by name."""
        return {split: list(rows.names) for split, rows in self.splits.items()}


class GroupedRegression(RowsByGroup, TaskFamily):
    """One regression task per group of rows; see the module docstring.

    Args:
        splits: "train", "val" and "test" rows.
        feature_names: one name per feature column ("floor", "Sex=Male", ...).
        target_offset, target_scale: original units = standardised * scale + offset.
        categories: the levels (the unknown level included) of each categorical column fed as
            integer codes in the last len(categories) feature columns, for backbones that embed
            them; () where categorical columns are one-hot or absent.
    """

    task_type = "regression"
    output_dim = 1

    def __init__(self, splits: dict[str, GroupedRows], feature_names: Sequence[str],
                 target_offset: float = 0.0, target_scale: float = 1.0,
                 categories: Sequence[int] = ()):
        self.splits = splits
        self.names_of_features = tuple(feature_names)
        self.offset, self.scale = float(target_offset), float(target_scale)
        self.levels = tuple(int(levels) for levels in categories)
        # the groups each split draws from: every group until check_fits sees the task shape
        self.drawn = {split: torch.arange(rows.num_groups) for split, rows in splits.items()}

    @property
    def target_offset(self) -> float:
        return self.offset

    @property
    def target_scale(self) -> float:
        return self.scale

    @property
    def categories(self) -> tuple[int, ...]:
        return self.levels

    def num_classes(self, split: str) -> int:
        """The groups of a split that give tasks of the shape checked last (all before)."""
        return len(self.drawn[split])

    def check_fits(self, episode: EpisodeSettings, name: str) -> None:
        """Draws only from groups with K + Q rows (the larger Q of meta-training and testing),
        saying how many each split leaves out; refuses a split left with no group. One support
        row, the default made for classification, is named: a group rarely adapts from it."""
        needed = episode.k_shot + max(episode.query_size, episode.train_query_size or 0)
        what = "episode.k_shot + episode.query_size" + (
            " (train_query_size)" if (episode.train_query_size or 0) > episode.query_size else "")
        for split, rows in self.splits.items():
            large = torch.nonzero(rows.counts >= needed).flatten()
            if len(large) == 0:
                raise UserError(f"{what} = {needed} is more than the rows of every group of "
                                f"{name}'s meta-{split} split (the largest has "
                                f"{int(rows.counts.max())}); use at most that many together")
            if len(large) < rows.num_groups:
                log.warning("%s: %d of the %d meta-%s groups have fewer than %s = %d rows and "
                            "give no tasks", name, rows.num_groups - len(large), rows.num_groups,
                            split, what, needed)
            self.drawn[split] = large
        largest = min(int(rows.counts.max()) for rows in self.splits.values())
        suggested = min(10, largest // 2)
        if episode.k_shot == 1 and suggested > 1:
            log.warning("episode.k_shot=1: each task adapts from one row of its group (the "
                        "default, made for classification); for per-group regression set, e.g., "
                        "episode.k_shot=%d episode.query_size=%d", suggested, suggested)

    def episode_rows(self, split: str, shape: TaskShape, batch_size: int,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The groups [B] and rows [B, K + Q] (indices into `rows(split)`, the first K the
        support) of `batch_size` tasks, using only `generator` for randomness."""
        rows, drawn = self.splits[split], self.drawn[split]
        _, k_shot, query_size = shape
        groups = drawn[torch.randint(len(drawn), (batch_size,), generator=generator)]
        counts = rows.counts[groups]
        most = int(counts.max())
        order = torch.rand(batch_size, most, generator=generator)
        order.masked_fill_(torch.arange(most) >= counts.unsqueeze(-1), 2.0)  # past the group
        picked = order.topk(k_shot + query_size, dim=1, largest=False).indices
        return groups, rows.offsets[groups].unsqueeze(-1) + picked

    def sample(self, split: str, shape: TaskShape, batch_size: int,
               generator: torch.Generator) -> TaskBatch:
        rows = self.splits[split]
        groups, picked = self.episode_rows(split, shape, batch_size, generator)
        x, y = gather(rows.features, picked), gather(rows.targets, picked)
        k_shot = shape.k_shot
        # classes: each task's group, for the count of test groups and their interval
        return TaskBatch(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:],
                         groups.unsqueeze(1))

    def episode_metrics(self, predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Each episode's mean absolute and root-mean-square error in the original units [B],
        beside the protocol's MSE."""
        error = (predictions - targets).flatten(1).float() * self.scale
        return {"mae": error.abs().mean(1), "rmse": error.square().mean(1).sqrt()}

