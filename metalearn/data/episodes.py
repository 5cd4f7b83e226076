"""Episodes (few-shot tasks) and the vectorised sampler every classification dataset shares."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
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
    takes. A NamedTuple, so Lightning moves it between devices as it is (None included).

    `classes`, where the sampler knows them: which of the split's classes each task drew,
    [B, N] (the class of label i at [:, i]), or for regression [B, 1] the task's group; None
    where tasks come from a continuum (sinusoids) or from a user. The evaluation counts the
    distinct classes behind its interval by it (metalearn/evaluation/protocol.py).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """The number of tasks in the batch."""
        return self.support_x.shape[0]

    def select(self, index: int | slice | Tensor) -> TaskBatch:
        """The tasks at `index` (a slice or indices along the batch), classes with them."""
        return TaskBatch(*(None if part is None else part[index] for part in self))

    def task(self, index: int) -> Task:
        return Task(*(part[index] for part in self[:4]))

    def tasks(self) -> Iterator[Task]:
        """The batch's tasks, one by one."""
        return map(self.task, range(self.batch_size))

    @classmethod
    def stack(cls, tasks: Iterable[Task]) -> TaskBatch:
        return cls(*(torch.stack(parts) for parts in zip(*tasks)))

    @classmethod
    def concat(cls, batches: Iterable[TaskBatch]) -> TaskBatch:
        """The batches one after the other; classes only where every batch knows them."""
        batches = list(batches)
        parts = [cat_padded(parts) for parts in zip(*(batch[:4] for batch in batches))]
        classes = [batch.classes for batch in batches]
        known = all(part is not None for part in classes)
        return cls(*parts, torch.cat(classes) if known else None)


def cat_padded(tensors: Sequence[Tensor]) -> Tensor:
    """torch.cat along the first dimension. Token ids of texts, which each sampled batch trims to
    its longest text, are first right-padded with 0 (padding) to the longest of them."""
    longest = max(tensor.shape[-1] for tensor in tensors)
    if not tensors[0].is_floating_point() and any(t.shape[-1] != longest for t in tensors):
        tensors = [F.pad(tensor, (0, longest - tensor.shape[-1])) for tensor in tensors]
    return torch.cat(list(tensors))


class ExampleBatch(NamedTuple):
    """Examples with their classes' indices among all the split's classes: a step of the
    supervised pre-training of the fine-tuning baselines, which train on examples, not tasks."""

    x: Tensor
    y: Tensor


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator whose state is a fixed function of the given integers.

    Batch i of a stream is drawn from seeded_generator(seed, stream, i), so any batch can be
    regenerated alone: episodes do not depend on workers, ranks or where a run was resumed.
    """
    state = 0
    for value in seeds:
        state = (state * 6364136223846793005 + int(value) + 1442695040888963407) % (1 << 63)
    return torch.Generator().manual_seed(state)


class ClassExamples(NamedTuple):
    """One split's examples, class by class: class c's are examples[offsets[c]:offsets[c + 1]].

    Examples are uint8 images [N, C, H, W], float feature vectors [N, D] or integer token ids
    [N, max_length] (0: padding; metalearn/data/text.py), in a tensor or in a
    memory-mapped numpy array (data larger than memory); classes may hold different numbers of
    examples. `names` names the classes, for messages.
    """

    examples: Tensor | np.ndarray
    offsets: Tensor
    names: tuple[str, ...]

    @classmethod
    def dense(cls, by_class: Tensor, names: Sequence[str]) -> ClassExamples:
        """From [classes, examples, ...]: every class with the same number of examples."""
        classes, per_class = by_class.shape[:2]
        return cls(by_class.flatten(0, 1), torch.arange(classes + 1) * per_class, tuple(names))

    @property
    def num_classes(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> Tensor:
        """Examples of each class: [classes]."""
        return self.offsets.diff()

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.examples.shape[1:])


def gather(examples: Tensor | np.ndarray, indices: Tensor) -> Tensor:
    """examples[indices], from a tensor or a memory map: [*indices.shape, *example shape]. uint8
    images come back as floats scaled to [0, 1], token ids (other integers) as int64, features as
    float32."""
    if isinstance(examples, np.ndarray):
        picked = torch.from_numpy(examples[indices.flatten().numpy()])
    else:
        picked = examples[indices.flatten()]
    picked = picked.view(*indices.shape, *picked.shape[1:])
    # one pass from uint8 to scaled floats (the same numbers as .float() / 255)
    if picked.dtype == torch.uint8:
        return torch.div(picked, 255.0)
    return picked.long() if not picked.is_floating_point() else picked.float()


def sample_classification_episodes(data: ClassExamples, shape: TaskShape, batch_size: int,
                                   generator: torch.Generator) -> TaskBatch:
    """Draws `batch_size` N-way K-shot tasks from one split's examples, without a Python loop.

    Each task takes N distinct classes and K + Q distinct examples of each (gathered by the
    classes' offsets, so classes may hold different numbers of examples); a class's label is its
    position in a random permutation, so labels 0..N-1 are permuted per task, and support and
    query are shuffled so that order says nothing about the label. Images come back as floats in
    [0, 1], features as they are; `classes` holds each task's classes, label i's at [:, i].
    """
    n_way, k_shot, query_size = shape
    per_class = k_shot + query_size
    counts = data.counts
    # The k smallest of iid uniforms, in ascending order: a uniform random ordered k-subset.
    # topk finds them in linear time (a full argsort over thousands of classes was 10x slower)
    # and picks exactly what argsort()[:k] would.
    classes = torch.rand(batch_size, data.num_classes, generator=generator)
    classes = classes.topk(n_way, dim=1, largest=False).indices
    most = int(counts.max())
    order = torch.rand(batch_size, n_way, most, generator=generator)
    if int(counts.min()) < most:  # a smaller class's missing examples are never among the k
        order.masked_fill_(torch.arange(most) >= counts[classes].unsqueeze(-1), 2.0)
    examples = order.topk(per_class, dim=2, largest=False).indices
    rows = data.offsets[classes].unsqueeze(-1) + examples  # [B, N, K+Q] rows of data.examples
    labels = torch.arange(n_way).view(1, n_way, 1).expand(batch_size, n_way, per_class)
    batch = torch.arange(batch_size).unsqueeze(1)

    def split(part: slice, size: int) -> tuple[Tensor, Tensor]:
        # shuffled as indices, so that the images are gathered (and converted) once
        split_rows = rows[:, :, part].reshape(batch_size, n_way * size)
        split_y = labels[:, :, part].reshape(batch_size, n_way * size)
        order = torch.rand(batch_size, n_way * size, generator=generator).argsort(dim=1)
        return gather(data.examples, split_rows[batch, order]), split_y[batch, order]

    support_x, support_y = split(slice(0, k_shot), k_shot)
    query_x, query_y = split(slice(k_shot, per_class), query_size)
    return TaskBatch(support_x, support_y, query_x, query_y, classes)
