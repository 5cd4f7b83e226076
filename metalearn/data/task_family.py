"""The data-source protocol: what the runner, the data module and the Python API ask of a
dataset. A new kind of data is a `TaskFamily` subclass and a dataset config targeting it; nothing
in the runner names a family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

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

if TYPE_CHECKING:
    from metalearn.data.tokenizers import Tokenizer

SPLITS = ("train", "val", "test")


class EpisodeSettings(NamedTuple):
    """The task shapes an episode config asks for (its keys by their names): `n_way` classes,
    `k_shot` support and `query_size` query examples (per class for classification), and the
    meta-training shape where it differs (`train_n_way`, `train_query_size`; None: the same)."""

    n_way: int
    k_shot: int
    query_size: int
    train_n_way: int | None = None
    train_query_size: int | None = None


class TaskFamily(ABC):
    """A distribution of few-shot tasks with disjoint meta-train / meta-val / meta-test parts.

    A family implements the abstract members; `num_examples` and `labelled_examples` only where
    its tasks are built from labelled examples an algorithm may pre-train on (the fine-tuning
    baselines do), the defaults refusing with one line.
    """

    @property
    @abstractmethod
    def task_type(self) -> str:
        """"classification" or "regression"; algorithms declare which they support."""

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input (C, H, W for images, (features,) for vectors); backbones are
        built for it."""

    @property
    @abstractmethod
    def output_dim(self) -> int | None:
        """Regression: the width of one target, what a learner outputs. Classification: None, a
        learner having one output per class of a task (episode.n_way)."""

    @abstractmethod
    def num_classes(self, split: str) -> int | None:
        """Classification: the classes of `split`. Regression: the distinct tasks `split` holds
        (a table's groups of rows), or None where tasks come from a continuum (sinusoids)."""

    @abstractmethod
    def check_fits(self, episode: EpisodeSettings, name: str) -> None:
        """Raises a one-line UserError, naming the episode key, its value and the most the data
        allows, when tasks of these shapes cannot be drawn from every split (before anything is
        built). `name`: the dataset's config name, for the message."""

    @abstractmethod
    def sample(self, split: str, shape: TaskShape, batch_size: int,
               generator: torch.Generator) -> TaskBatch:
        """Draws `batch_size` tasks of `shape` from `split`, using only `generator` for
        randomness."""

    @property
    def target_scale(self) -> float:
        """The factor by which the family divided regression targets; an MSE in original units
        is the reported MSE times its square."""
        return 1.0

    def episode_metrics(self, predictions: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """More per-episode scores [B] by name, beside the protocol's accuracy or MSE, from an
        evaluation's predictions [B, Q, ...] and query targets [B, Q, ...]: what the family's
        users read (errors in the original units, a ranking metric). None by default."""
        return {}

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer that made a text family's token ids (metalearn/data/tokenizers.py);
        None for other data. Text encoders are built for it."""
        return None

    def input_record(self) -> dict:
        """What a checkpoint keeps of the inputs its model was built for: their shape, and a
        text family's tokenizer (evaluation on other texts encodes them with it)."""
        record: dict = {"input_shape": list(self.input_shape)}
        if self.tokenizer is not None:
            record["tokenizer"] = self.tokenizer.state()
        return record

    def split_record(self) -> dict[str, list[str]] | None:
        """The class (or group) names of each split, which a run records in its directory
        (data_split.json); None where tasks are drawn from a distribution (the sinusoid)."""
        return None

    def num_examples(self, split: str) -> int:
        """The labelled examples of `split`, for the algorithms that pre-train on examples rather
        than tasks: `labelled_examples` takes rows below this number."""
        raise self.no_labelled_examples()

    def labelled_examples(self, split: str, rows: Tensor,
                          generator: torch.Generator) -> ExampleBatch:
        """The split's examples at `rows` with their classes' indices in the split (not episodes:
        what supervised pre-training takes), using only `generator` for randomness."""
        raise self.no_labelled_examples()

    def no_labelled_examples(self) -> UserError:
        return UserError(f"{type(self).__name__} ({self.task_type} tasks) has no labelled "
                         "examples to pre-train on; an algorithm that pre-trains on examples needs "
                         "a dataset of labelled examples (a ClassificationTaskFamily)")


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
    output_dim = None
    #: whether the family has the `min_examples` setting that leaves out small classes (the
    #: error of a task shape larger than the smallest class then suggests it)
    drops_small_classes = False

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

    def split_record(self) -> dict[str, list[str]]:
        return {split: [str(name) for name in part.names] for split, part in self.splits.items()}

    def check_fits(self, episode: EpisodeSettings, name: str) -> None:
        ways = {split: ("n_way", episode.n_way) for split in SPLITS}
        queries = [("query_size", episode.query_size)]
        if episode.train_n_way:
            ways["train"] = ("train_n_way", episode.train_n_way)
        if episode.train_query_size:
            queries.append(("train_query_size", episode.train_query_size))
        for split, (key, n_way) in ways.items():
            if n_way < 2:
                raise UserError(f"episode.{key}={n_way}: a classification task needs at least 2 "
                                "classes (with one, every prediction is right)")
            classes = self.num_classes(split)
            if n_way > classes:
                raise UserError(
                    f"episode.{key}={n_way} is more than the {classes} classes of {name}'s "
                    f"meta-{split} split; use at most {classes}"
                )
        smallest, examples = self.smallest_class()
        uniform = all(int(part.counts.max()) == examples for part in self.splits.values())
        where = (f"examples per class of {name}" if uniform else
                 f"examples of {name}'s class {smallest!r}, its smallest")
        hint = ("" if uniform or not self.drops_small_classes else
                ", or leave out the classes that small with dataset.min_examples")
        for key, query_size in queries:
            if episode.k_shot + query_size > examples:
                raise UserError(
                    f"episode.k_shot + episode.{key} = {episode.k_shot} + {query_size} = "
                    f"{episode.k_shot + query_size} is more than the {examples} {where}; use at "
                    f"most {examples} together{hint}"
                )

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
        """Augmented as meta-training episodes are."""
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
        return batch._replace(support_x=function(batch.support_x),
                              query_x=function(batch.query_x))
