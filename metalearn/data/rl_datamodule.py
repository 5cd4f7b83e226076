"""The Lightning data module of meta-reinforcement learning: streams of tasks (environments), not
of labelled episodes.

A meta-training step takes `RLBatch(tasks, seed)`: `meta_batch_size` tasks drawn from the env
family and the seed of every rollout the step makes; item i of the stream is drawn from
seeded_generator(seed, 0, i) alone, so a resumed run meets the tasks and the rollout seeds it
would have met (the loader and its sampler are the episodic data module's). Validation and test
are one batch each: the split's fixed held-out tasks (EnvFamily.held_out_tasks, from eval_seed)
with a rollout seed fixed by eval_seed and the split, so every algorithm, seed and checkpoint is
scored on the same tasks with the same rollout seeds.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from metalearn.data.datamodule import DEFAULT_NUM_TASKS, EpochSampler, ResumableLoader
from metalearn.data.env_family import EnvFamily
from metalearn.data.episodes import seeded_generator
from metalearn.data.task_family import SPLITS

#: the largest rollout seed (numpy's and gymnasium's seeds are below 2**32)
MAX_SEED = 2**31 - 1


class RLBatch(NamedTuple):
    """Tasks of an env family and the seed of the rollouts made on them."""

    tasks: list
    seed: int


def unchanged(batch: RLBatch) -> RLBatch:
    """The loader's collate function: tasks are the env's own values, not tensors to stack."""
    return batch


class TaskDraws(Dataset):
    """Item i: `batch_size` tasks and a rollout seed drawn from seeded_generator(seed, 0, i)."""

    def __init__(self, envs: EnvFamily, batch_size: int, seed: int, length: int):
        self.envs, self.batch_size, self.seed, self.length = envs, batch_size, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> RLBatch:
        generator = seeded_generator(self.seed, SPLITS.index("train"), index)
        tasks = self.envs.sample_tasks(self.batch_size, generator)
        return RLBatch(tasks, int(torch.randint(MAX_SEED, (), generator=generator)))


class HeldOut(Dataset):
    """One item: the split's held-out tasks with their rollout seed."""

    def __init__(self, batch: RLBatch):
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> RLBatch:
        return self.batch


class EnvDataModule(LightningDataModule):
    """Tasks for meta-reinforcement learning.

    Args:
        tasks: the env family (the `env` config instantiated; passed by the builder).
        meta_batch_size: tasks per meta-training step (MAML: 20 for 2D navigation, 40 for
            half-cheetah).
        num_tasks: meta-training tasks per epoch, in whole meta-batches (rounded up; None:
            DEFAULT_NUM_TASKS).
        val_tasks, test_tasks: the held-out tasks of each validation and of the meta-test.
        eval_seed: fixes the held-out tasks and their rollout seeds, the same for every run.
        seed: seeds the meta-training tasks and rollouts.
        num_workers: DataLoader workers drawing the meta-training tasks (0: the main process;
            the rollouts are the algorithm's, in the main process, whatever this is).
    """

    def __init__(self, tasks: EnvFamily, meta_batch_size: int = 20, num_tasks: int | None = None,
                 val_tasks: int = 20, test_tasks: int = 40, eval_seed: int = 0, seed: int = 0,
                 num_workers: int = 0):
        super().__init__()
        self.tasks = tasks
        self.meta_batch_size, self.num_tasks = meta_batch_size, num_tasks
        self.val_tasks, self.test_tasks = val_tasks, test_tasks
        self.eval_seed, self.seed, self.num_workers = eval_seed, seed, num_workers

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil((self.num_tasks or DEFAULT_NUM_TASKS) / self.meta_batch_size)

    def held_out(self, split: str) -> RLBatch:
        """The split's fixed tasks and their rollout seed."""
        count = self.val_tasks if split == "val" else self.test_tasks
        seed = int(torch.randint(MAX_SEED, (), generator=seeded_generator(
            self.eval_seed, SPLITS.index(split), -1)))
        return RLBatch(self.tasks.held_out_tasks(split, count, self.eval_seed), seed)

    def train_dataloader(self) -> DataLoader:
        stream = TaskDraws(self.tasks, self.meta_batch_size, self.seed, self.steps_per_epoch)
        return ResumableLoader(stream, self.train_items_done, batch_size=None,
                               sampler=EpochSampler(len(stream)), collate_fn=unchanged,
                               num_workers=self.num_workers)

    def train_items_done(self) -> int:
        trainer = self.trainer
        return trainer.global_step if trainer else 0

    def val_dataloader(self) -> DataLoader:
        return DataLoader(HeldOut(self.held_out("val")), batch_size=None, collate_fn=unchanged)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(HeldOut(self.held_out("test")), batch_size=None, collate_fn=unchanged)
