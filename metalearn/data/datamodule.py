"""The Lightning data module that turns a task family into streams of episodes."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from metalearn.data.episodes import ExampleBatch, TaskBatch, TaskShape, seeded_generator
from metalearn.data.task_family import SPLITS, TaskFamily
from metalearn.errors import UserError

log = logging.getLogger(__name__)

#: meta-training tasks per epoch where episode.num_tasks is null, in whole meta-batches (rounded
#: up without a word: the user chose neither number)
DEFAULT_NUM_TASKS = 1000


class TaskStream(Dataset):
    """Item i is a batch of `tasks_per_item` tasks drawn with seeded_generator(seed, split, i).

    Any item can be regenerated on its own, so the stream is the same whatever the number of
    workers, the batch size of the loader, or the step a run resumes from. With several
    processes (DDP), every rank draws the whole batch and keeps its share of the tasks,
    `rank::world_size`, so together they train on exactly the tasks one process would.
    """

    def __init__(self, tasks: TaskFamily, split: str, shape: TaskShape, tasks_per_item: int,
                 seed: int, length: int, rank: int = 0, world_size: int = 1):
        self.tasks, self.split, self.shape = tasks, split, shape
        self.tasks_per_item, self.seed, self.length = tasks_per_item, seed, length
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> TaskBatch:
        generator = seeded_generator(self.seed, SPLITS.index(self.split), index)
        batch = self.tasks.sample(self.split, self.shape, self.tasks_per_item, generator)
        if self.world_size == 1:
            return batch
        return batch.select(slice(self.rank, None, self.world_size))


#: seeds the stream of pre-training batches apart from the task streams (SPLITS' indices)
EXAMPLE_STREAM = len(SPLITS)


class ExampleStream(Dataset):
    """Item i is a batch of `batch_size` meta-train examples with their class indices: the
    supervised pre-training of the algorithms that pre-train on examples, not tasks.

    Passes over the examples follow each other, each in its own order: item i is part i % n of
    pass i // n, in the order seeded_generator(seed, EXAMPLE_STREAM, pass) draws (and
    augmentation from a generator of its own), so any item can be regenerated alone, as in
    TaskStream. With several processes, every rank keeps its share of the batch.
    """

    def __init__(self, tasks: TaskFamily, batch_size: int, seed: int, length: int,
                 rank: int = 0, world_size: int = 1):
        self.tasks, self.batch_size, self.seed, self.length = tasks, batch_size, seed, length
        self.rank, self.world_size = rank, world_size
        self.examples = tasks.num_examples("train")
        self.order: tuple[int, torch.Tensor] | None = None  # (pass, its order), the last drawn

    @property
    def items_per_pass(self) -> int:
        return math.ceil(self.examples / self.batch_size)

    def __len__(self) -> int:
        return self.length

    def pass_order(self, index: int) -> torch.Tensor:
        epoch = index // self.items_per_pass
        if self.order is None or self.order[0] != epoch:
            generator = seeded_generator(self.seed, EXAMPLE_STREAM, epoch)
            self.order = epoch, torch.randperm(self.examples, generator=generator)
        return self.order[1]

    def __getitem__(self, index: int) -> ExampleBatch:
        start = index % self.items_per_pass * self.batch_size
        rows = self.pass_order(index)[start:start + self.batch_size]
        rows = rows[self.rank::self.world_size].contiguous()
        generator = seeded_generator(self.seed, EXAMPLE_STREAM, index, self.rank)
        return self.tasks.labelled_examples("train", rows, generator)


#: what meta-training steps take: (data module, rank, world_size) -> a stream whose item i is
#: step i of this process's share (an algorithm's `training_stream`)
TrainingStream = Callable[["EpisodicDataModule", int, int], Dataset]


class EpochSampler(Sampler[int]):
    """Yields items epoch * n .. epoch * n + n - 1, so every epoch meets fresh tasks.

    Lightning calls set_epoch at the start of each training epoch. A run resumed in the middle
    of an epoch starts from `resume_from`, the next item of the interrupted run, once. The items
    are decided when the first is asked for, not when the iterator is made: a run resumed at
    the end of an epoch has its iterator made before set_epoch names the next epoch.
    """

    def __init__(self, items_per_epoch: int, resume_from: int | None = None):
        self.items_per_epoch, self.epoch, self.resume_from = items_per_epoch, 0, resume_from

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items_per_epoch

    def __iter__(self):
        start = self.epoch * self.items_per_epoch  # a generator: run at the first next()
        if self.resume_from is not None:
            # Lightning does not call set_epoch when it resumes inside an epoch
            self.epoch, start = self.resume_from // self.items_per_epoch, self.resume_from
            self.resume_from = None
        yield from range(start, (self.epoch + 1) * self.items_per_epoch)


class ResumableLoader(DataLoader):
    """The meta-training loader. Its state, the next item of the episode stream, travels in
    Lightning's checkpoints, so a run resumed inside an epoch meets the tasks it would have met.

    Item i is outer step i: one meta-batch per step, every epoch the same length.
    """

    # **loader_args: Lightning rebuilds loaders with other samplers (trainer.overfit_batches)
    def __init__(self, dataset: TaskStream | ExampleStream, items_done: Callable[[], int], **loader_args):
        super().__init__(dataset, **loader_args)
        self.items_done = items_done

    def state_dict(self) -> dict[str, int]:
        return {"next_train_item": self.items_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if isinstance(self.sampler, EpochSampler):
            self.sampler.resume_from = state["next_train_item"]


class RankSampler(Sampler[int]):
    """This rank's share of the evaluation episodes: items rank, rank + world_size, ... .

    Each episode is scored by one rank; the per-episode scores are gathered before averaging."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.items = range(rank, length, world_size)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


class EpisodicDataModule(LightningDataModule):
    """The meta-training stream the trained algorithm asks for; fixed meta-val and meta-test
    episodes.

    Args:
        tasks: the task family (a dataset config instantiated).
        n_way, k_shot, query_size: task shape; query_size counts query examples per class
            (per task for regression).
        train_n_way, train_query_size: the shape of meta-training tasks where it differs (None:
            the same as above). Prototypical Networks train best with more ways than they are
            tested on (Snell et al. 2017, section 3.1).
        meta_batch_size: tasks per meta-training step.
        num_tasks: meta-training tasks per epoch (fresh ones each epoch), in whole meta-batches:
            rounded up to a multiple of meta_batch_size, with a warning when training starts;
            None: DEFAULT_NUM_TASKS, rounded up without one.
        val_episodes, test_episodes: episodes per validation / test run.
        eval_seed: seeds the meta-val and meta-test episodes. It is independent of the training
            seed, so runs of different algorithms and seeds are scored on the same episodes.
        seed: seeds the meta-training stream.
        eval_batch_size: episodes per validation/test step (speed only; the episodes stay the same).
        num_workers: DataLoader workers.
        training_stream: the trained algorithm's `training_stream` (passed by the builder):
            what meta-training steps take, asked of this data module when the training loader
            is made; None: batches of tasks (`task_stream`). The algorithms that pre-train on
            examples ask for batches of labelled meta-train examples (`example_stream`), for
            which the episode settings of meta-training (meta_batch_size, num_tasks,
            train_n_way, train_query_size) play no part.
    """

    def __init__(self, tasks: TaskFamily, n_way: int = 5, k_shot: int = 1, query_size: int = 15,
                 train_n_way: int | None = None, train_query_size: int | None = None,
                 meta_batch_size: int = 1, num_tasks: int | None = None, val_episodes: int = 200,
                 test_episodes: int = 600, eval_seed: int = 0, seed: int = 0,
                 eval_batch_size: int = 8, num_workers: int = 0,
                 training_stream: TrainingStream | None = None):
        super().__init__()
        self.tasks = tasks
        self.training_stream = training_stream or type(self).task_stream
        self.n_way, self.k_shot, self.query_size = n_way, k_shot, query_size
        self.train_n_way = train_n_way or n_way
        self.train_query_size = train_query_size or query_size
        self.meta_batch_size, self.num_tasks = meta_batch_size, num_tasks
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.eval_seed, self.seed = eval_seed, seed
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers

    def task_stream(self, rank: int = 0, world_size: int = 1) -> TaskStream:
        """Meta-batches of `meta_batch_size` tasks; an epoch is episode.num_tasks in whole
        meta-batches, rounded up."""
        if self.meta_batch_size % world_size:
            raise UserError(
                f"episode.meta_batch_size={self.meta_batch_size} cannot be split evenly over "
                f"{world_size} processes; use a multiple of {world_size}"
            )
        steps = math.ceil((self.num_tasks or DEFAULT_NUM_TASKS) / self.meta_batch_size)
        shape = TaskShape(self.train_n_way, self.k_shot, self.train_query_size)
        return TaskStream(self.tasks, "train", shape, self.meta_batch_size, self.seed, steps,
                          rank, world_size)

    def example_stream(self, batch_size: int, rank: int = 0,
                       world_size: int = 1) -> ExampleStream:
        """Batches of `batch_size` labelled meta-train examples (the task family's
        `labelled_examples`); an epoch is one pass over them."""
        steps = math.ceil(self.tasks.num_examples("train") / batch_size)
        return ExampleStream(self.tasks, batch_size, self.seed, steps, rank, world_size)

    @property
    def steps_per_epoch(self) -> int:
        """Outer steps per epoch: items of an epoch of the training stream."""
        return len(self.training_stream(self, 0, 1))

    def ranks(self) -> tuple[int, int]:
        """(this process's rank, number of processes) under the trainer; (0, 1) without one."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self.ranks()
        stream = self.training_stream(self, rank, world_size)
        if isinstance(stream, TaskStream) and rank == 0:
            self.say_num_tasks_rounded(len(stream))
        return ResumableLoader(stream, self.train_items_done, batch_size=None,
                               sampler=EpochSampler(len(stream)), num_workers=self.num_workers)

    def say_num_tasks_rounded(self, steps: int) -> None:
        """One line, as training starts, where the episode.num_tasks the user set is not a whole
        number of meta-batches."""
        if self.num_tasks is not None and self.num_tasks % self.meta_batch_size:
            log.warning("episode.num_tasks=%d is not a whole number of meta-batches of %d: an "
                        "epoch is %d outer steps (%d tasks)", self.num_tasks,
                        self.meta_batch_size, steps, steps * self.meta_batch_size)

    def train_items_done(self) -> int:
        trainer = self.trainer
        return trainer.global_step * trainer.accumulate_grad_batches if trainer else 0

    def eval_dataloader(self, split: str, episodes: int) -> DataLoader:
        # One task per item, so the episodes do not depend on eval_batch_size.
        shape = TaskShape(self.n_way, self.k_shot, self.query_size)
        stream = TaskStream(self.tasks, split, shape, 1, self.eval_seed, episodes)
        return DataLoader(stream, batch_size=self.eval_batch_size, collate_fn=TaskBatch.concat,
                          sampler=RankSampler(episodes, *self.ranks()),
                          num_workers=self.num_workers)

    def test_episode_rows(self) -> Tensor:
        """The rows of each test episode [episodes, K + Q] of a family of grouped rows
        (GroupedRegression.episode_rows), drawn from the test episodes' own generators: what the
        classical baselines score (metalearn/run/classical_scores.py)."""
        shape = TaskShape(self.n_way, self.k_shot, self.query_size)
        split = SPLITS.index("test")
        return torch.cat([self.tasks.episode_rows("test", shape, 1,
                                                  seeded_generator(self.eval_seed, split, i))[1]
                          for i in range(self.test_episodes)])

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val", self.val_episodes)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test", self.test_episodes)
