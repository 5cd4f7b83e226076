"""Episodes (few-shot tasks) and the vectorised sampler every classification dataset shares."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor


class TaskShape(NamedTuple):
    """The shape of a classification task: `n_way` classes, `k_shot` support and `query_size`
    query examples per class (regression: `k_shot` support and `query_size` query points)."""

    n_way: int
    k_shot: int
    query_size: int


class Task(NamedTuple):
    """One few-shot task: a support set to learn from and a query set to predict.

    Classification: x is [N*K, C, H, W] (support) / [N*Q, C, H, W] (query), y holds labels
    0..N-1. Regression: x and y are [K, in] / [Q, out] floats.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def support(self) -> tuple[Tensor, Tensor]:
        """(support_x, support_y), the form MetaLearner.adapt takes."""
        return self.support_x, self.support_y

    @property
    def query(self) -> tuple[Tensor, Tensor]:
        """(query_x, query_y), the form MetaLearner.evaluate takes."""
        return self.query_x, self.query_y


class TaskBatch(NamedTuple):
    """Tasks stacked along a first dimension: what a meta-training step or an evaluation step
    takes. A NamedTuple, so Lightning moves it between devices as it is."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def batch_size(self) -> int:
        """The number of tasks in the batch."""
        return self.support_x.shape[0]

    def task(self, index: int) -> Task:
        return Task(*(part[index] for part in self))

    def tasks(self) -> Iterator[Task]:
        """The batch's tasks, one by one."""
        return map(self.task, range(self.batch_size))

    @classmethod
    def stack(cls, tasks: Iterable[Task]) -> TaskBatch:
        return cls(*(torch.stack(parts) for parts in zip(*tasks)))

    @classmethod
    def concat(cls, batches: Iterable[TaskBatch]) -> TaskBatch:
        return cls(*(torch.cat(parts) for parts in zip(*batches)))


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator whose state is a fixed function of the given integers.

    Batch i of a stream is drawn from seeded_generator(seed, stream, i), so any batch can be
    regenerated alone: episodes do not depend on workers, ranks or where a run was resumed.
    """
    state = 0
    for value in seeds:
        state = (state * 6364136223846793005 + int(value) + 1442695040888963407) % (1 << 63)
    return torch.Generator().manual_seed(state)


def sample_classification_episodes(images_by_class: Tensor, shape: TaskShape, batch_size: int,
                                   generator: torch.Generator) -> TaskBatch:
    """Draws `batch_size` N-way K-shot tasks from a class-indexed image tensor, without a Python
    loop.

    images_by_class: uint8 [classes, examples, C, H, W]. Each task takes N distinct classes and
    K + Q distinct examples of each; a class's label is its position in a random permutation, so
    labels 0..N-1 are permuted per task, and support and query are shuffled so that order says
    nothing about the label. Images come back as floats in [0, 1].
    """
    n_way, k_shot, query_size = shape
    num_classes, num_examples = images_by_class.shape[:2]
    per_class = k_shot + query_size
    # The k smallest of iid uniforms, in ascending order: a uniform random ordered k-subset.
    # topk finds them in linear time (a full argsort over thousands of classes was 10x slower)
    # and picks exactly what argsort()[:k] would.
    classes = torch.rand(batch_size, num_classes, generator=generator)
    classes = classes.topk(n_way, dim=1, largest=False).indices
    examples = torch.rand(batch_size, n_way, num_examples, generator=generator)
    examples = examples.topk(per_class, dim=2, largest=False).indices
    images = images_by_class[classes.unsqueeze(-1), examples]  # [B, N, K+Q, C, H, W]
    images = images.float().div_(255.0)
    labels = torch.arange(n_way).view(1, n_way, 1).expand(batch_size, n_way, per_class)

    def split(part: slice, size: int) -> tuple[Tensor, Tensor]:
        x = images[:, :, part].reshape(batch_size, n_way * size, *images.shape[3:])
        y = labels[:, :, part].reshape(batch_size, n_way * size)
        order = torch.rand(batch_size, n_way * size, generator=generator).argsort(dim=1)
        batch = torch.arange(batch_size).unsqueeze(1)
        return x[batch, order], y[batch, order]

    support_x, support_y = split(slice(0, k_shot), k_shot)
    query_x, query_y = split(slice(k_shot, per_class), query_size)
    return TaskBatch(support_x, support_y, query_x, query_y)
