"""The Lightning data module that turns a task family into streams of episodes."""

from __future__ import annotations

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from metalearn.data.episodes import Episode, seeded_generator
from metalearn.data.task_family import SPLITS, TaskFamily


class EpisodeStream(Dataset):
    """Item i is a batch of `tasks_per_item` tasks drawn with seeded_generator(seed, split, i).

    Any item can be regenerated on its own, so the stream is the same whatever the number of
    workers, the batch size of the loader, or the step a run resumes from.
    """

    def __init__(self, tasks: TaskFamily, split: str, n_way: int, k_shot: int, query_size: int,
                 tasks_per_item: int, seed: int, length: int):
        self.tasks, self.split = tasks, split
        self.shape = (n_way, k_shot, query_size)
        self.tasks_per_item, self.seed, self.length = tasks_per_item, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Episode:
        generator = seeded_generator(self.seed, SPLITS.index(self.split), index)
        return self.tasks.sample(self.split, *self.shape, self.tasks_per_item, generator)


class EpochSampler(Sampler[int]):
    """Yields items epoch * n .. epoch * n + n - 1, so every epoch meets fresh tasks.

    Lightning calls set_epoch at the start of each training epoch.
    """

    def __init__(self, items_per_epoch: int):
        self.items_per_epoch, self.epoch = items_per_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items_per_epoch

    def __iter__(self):
        start = self.epoch * self.items_per_epoch
        return iter(range(start, start + self.items_per_epoch))


def concat_episodes(items: list[Episode]) -> Episode:
    return Episode(*(torch.cat(parts) for parts in zip(*items)))


class EpisodicDataModule(LightningDataModule):
    """Meta-train batches of `meta_batch_size` tasks; fixed meta-val and meta-test episodes.

    Args:
        tasks: the task family (a dataset config instantiated).
        n_way, k_shot, query_size: task shape; query_size counts query examples per class
            (per task for regression).
        train_n_way, train_query_size: the shape of meta-training tasks where it differs (None:
            the same as above). Prototypical Networks train best with more ways than they are
            tested on (Snell et al. 2017, section 3.1).
        meta_batch_size: tasks per meta-training step.
        num_tasks: meta-training tasks per epoch (fresh ones each epoch).
        val_episodes, test_episodes: episodes per validation / test run.
        eval_seed: seeds the meta-val and meta-test episodes. It is independent of the training
            seed, so runs of different algorithms and seeds are scored on the same episodes.
        seed: seeds the meta-training stream.
        eval_batch_size: episodes per validation/test step (speed only; the episodes stay the same).
        num_workers: DataLoader workers.
    """

    def __init__(self, tasks: TaskFamily, n_way: int = 5, k_shot: int = 1, query_size: int = 15,
                 train_n_way: int | None = None, train_query_size: int | None = None,
                 meta_batch_size: int = 1, num_tasks: int = 1000, val_episodes: int = 100,
                 test_episodes: int = 600, eval_seed: int = 0, seed: int = 0,
                 eval_batch_size: int = 8, num_workers: int = 0):
        super().__init__()
        self.tasks = tasks
        self.n_way, self.k_shot, self.query_size = n_way, k_shot, query_size
        self.train_n_way = train_n_way or n_way
        self.train_query_size = train_query_size or query_size
        self.meta_batch_size, self.num_tasks = meta_batch_size, num_tasks
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.eval_seed, self.seed = eval_seed, seed
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_tasks // self.meta_batch_size)

    def train_dataloader(self) -> DataLoader:
        stream = EpisodeStream(self.tasks, "train", self.train_n_way, self.k_shot,
                               self.train_query_size, self.meta_batch_size, self.seed,
                               self.steps_per_epoch)
        return DataLoader(stream, batch_size=None, sampler=EpochSampler(self.steps_per_epoch),
                          num_workers=self.num_workers)

    def eval_dataloader(self, split: str, episodes: int) -> DataLoader:
        # One task per item, so the episodes do not depend on eval_batch_size.
        stream = EpisodeStream(self.tasks, split, self.n_way, self.k_shot, self.query_size, 1,
                               self.eval_seed, episodes)
        return DataLoader(stream, batch_size=self.eval_batch_size, collate_fn=concat_episodes,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val", self.val_episodes)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test", self.test_episodes)
