"""What the episodic data module asks of a dataset: sample a batch of tasks from a split."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from metalearn.data.episodes import TaskBatch, TaskShape, sample_classification_episodes

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
    """Tasks drawn from class-indexed image tensors, one per split."""

    task_type = "classification"

    def __init__(self, images_by_split: dict[str, torch.Tensor]):
        # uint8 [classes, examples, C, H, W] per split
        self.images_by_split = images_by_split

    def num_classes(self, split: str) -> int:
        return self.images_by_split[split].shape[0]

    @property
    def examples_per_class(self) -> int:
        return min(images.shape[1] for images in self.images_by_split.values())

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images_by_split["train"].shape[2:])

    def sample(self, split, shape, batch_size, generator):
        return sample_classification_episodes(self.images_by_split[split], shape, batch_size,
                                              generator)
