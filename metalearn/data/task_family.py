"""What the episodic data module asks of a dataset: sample a batch of tasks from a split."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from metalearn.data.episodes import (
    ClassExamples,
    ExampleBatch,
    TaskBatch,
    TaskShape,
    gather,
    sample_classification_episodes,
)
from metalearn.errors import UserError

SPLITS = ("train", "val", "test")


class TaskFamily(ABC):
    """A distribution of few-shot tasks with disjoint meta-train / meta-val / meta-test parts."""

    #: "classification" or "regression"; algorithms declare which they support.
    task_type: str
    #: shape of one input (C, H, W for images); backbones are built for it.
    input_shape: tuple[int, ...]

    @abstractmethod
    def sample(self, split: str, shape: TaskShape, batch_size: int,
               generator: torch.Generator) -> TaskBatch:
        """Draws `batch_size` tasks of `shape` from `split`, using only `generator` for
        randomness."""


class ClassificationTaskFamily(TaskFamily):
    """N-way K-shot tasks drawn from each split's examples (`ClassExamples`, classes disjoint
    between splits).

    Args:
        splits: "train", "val" and "test" examples.
        normalize: per-channel (mean, std) subtracted and divided after sampling, or None.
        augment: applied to the images of meta-training episodes, before normalisation:
            `augment(images, generator)` (metalearn/data/augment.py), or None.
    """

    task_type = "classification"

    def __init__(self, splits: dict[str, ClassExamples],
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                 augment: Callable[[Tensor, torch.Generator], Tensor] | None = None):
        self.splits, self.augment = splits, augment
        self.normalize = None
        if normalize is not None:
            channels = self.input_shape[0]
            if len(normalize) != 2 or any(len(values) != channels for values in normalize):
                raise UserError(f"dataset.normalize={[list(v) for v in normalize]} must be "
                                f"[[means], [stds]] with {channels} values each, one per channel")
            mean, std = (torch.tensor(values, dtype=torch.float32) for values in normalize)
            shape = (-1,) + (1,) * (len(self.input_shape) - 1)  # per channel
            self.normalize = mean.view(shape), std.view(shape)

    def num_classes(self, split: str) -> int:
        return self.splits[split].num_classes

    def smallest_class(self) -> tuple[str, int]:
        """The name and example count of the class with the fewest examples, of any split."""
        split = min(self.splits.values(), key=lambda part: int(part.counts.min()))
        index = int(split.counts.argmin())
        return split.names[index], int(split.counts[index])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.splits["train"].example_shape

    def sample(self, split, shape, batch_size, generator):
        batch = sample_classification_episodes(self.splits[split], shape, batch_size, generator)
        if split == "train" and self.augment is not None:
            batch = self.map_images(batch, lambda x: self.augment(x, generator))
        return self.map_images(batch, self.normalized)

    def num_examples(self, split: str) -> int:
        return int(self.splits[split].offsets[-1])

    def labelled_examples(self, split: str, rows: Tensor,
                          generator: torch.Generator) -> ExampleBatch:
        """The split's examples at `rows` with their classes' indices in the split (not episodes:
        what supervised pre-training takes), augmented as meta-training episodes are."""
        data = self.splits[split]
        x = gather(data.examples, rows)
        if split == "train" and self.augment is not None:
            x = self.augment(x, generator)
        y = torch.searchsorted(data.offsets, rows, right=True) - 1
        return ExampleBatch(self.normalized(x), y)

    def augmented_view(self, batch: TaskBatch, generator: torch.Generator) -> TaskBatch:
        """An augmented view of a sampled (normalised) batch: test-time augmentation."""
        return self.map_images(batch, lambda x: self.normalized(
            self.augment(self.unnormalized(x), generator)))

    def normalized(self, images: Tensor) -> Tensor:
        if self.normalize is None:
            return images
        mean, std = self.normalize
        return images.sub(mean).div_(std)

    def unnormalized(self, images: Tensor) -> Tensor:
        if self.normalize is None:
            return images
        mean, std = self.normalize
        return images.mul(std).add_(mean)

    @staticmethod
    def map_images(batch: TaskBatch, function: Callable[[Tensor], Tensor]) -> TaskBatch:
        return TaskBatch(function(batch.support_x), batch.support_y, function(batch.query_x),
                         batch.query_y)
