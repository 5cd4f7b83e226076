"""`TaskSampler`: few-shot tasks drawn from one split of a dataset, as the data module draws
them: `TaskSampler(split="test", seed=0)` gives exactly the test episodes of train.py's default
`episode.eval_seed`."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

from omegaconf import DictConfig

from metalearn.data.datamodule import TaskStream
from metalearn.data.episodes import TaskBatch, TaskShape
from metalearn.data.task_family import SPLITS, TaskFamily
from metalearn.errors import UserError, check_whole_number
from metalearn.run.build import instantiate_dataset
from metalearn.run.compose import apply_settings, checked_choice, compose_config
from metalearn.run.config_check import check_config, check_episode_fits, check_known_keys


def check_task_settings(cfg: DictConfig) -> None:
    """The config checks that concern tasks (values, the dataset's keys): a sampler's config
    holds no algorithm of the user's to check against the dataset, only train.py's default."""
    check_config(cfg)
    check_known_keys(cfg)


class TaskSampler:
    """Draws few-shot tasks from one split of a dataset.

    Args:
        dataset: a config of configs/dataset/ ("omniglot", "sinusoid"), or of the user's own
            config directory given as `overrides=["hydra.searchpath=[file://DIR]"]`.
        n_way, k_shot, query_size: task shape; query_size counts query examples per class
            (query points for regression).
        split: "train", "val" or "test" (disjoint classes).
        seed: `sample` draws the seed's stream of batches in order, and `fixed_episodes` its
            fixed episodes; seed 0 on "test" gives train.py's test episodes (episode.eval_seed).
        overrides: Hydra overrides of the dataset config, such as "dataset.split=lake", and
            the search path ("hydra.searchpath=[file://DIR]").
    """

    def __init__(self, dataset: str = "omniglot", n_way: int = 5, k_shot: int = 1,
                 query_size: int = 15, split: str = "train", seed: int = 0,
                 overrides: Iterable[str] = ()):
        if split not in SPLITS:
            raise UserError(f"split={split!r} is not one of: {', '.join(SPLITS)}")
        check_whole_number("seed", seed, minimum=0)
        overrides = list(overrides)
        cfg = compose_config([f"dataset={checked_choice('dataset', dataset, overrides)}",
                              *overrides], output_dir=".")
        apply_settings(cfg, {"n_way": n_way, "k_shot": k_shot, "query_size": query_size,
                             "train_n_way": None, "train_query_size": None})
        check_task_settings(cfg)
        self.tasks: TaskFamily = instantiate_dataset(cfg)
        check_episode_fits(cfg, self.tasks)
        self.config: DictConfig = cfg
        self.dataset, self.dataset_config = dataset, cfg.dataset
        self.n_way, self.k_shot, self.query_size = n_way, k_shot, query_size
        self.split, self.seed = split, seed
        self.batches_drawn = 0

    def __repr__(self) -> str:
        return (f"TaskSampler(dataset={self.dataset!r}, n_way={self.n_way}, k_shot={self.k_shot}, "
                f"query_size={self.query_size}, split={self.split!r}, seed={self.seed})")

    def stream(self, tasks_per_item: int, shape: TaskShape | None = None) -> TaskStream:
        """The seed's stream of batches of `tasks_per_item` tasks (of the sampler's shape)."""
        shape = shape or self.shape()
        return TaskStream(self.tasks, self.split, shape, tasks_per_item, self.seed, length=2**62)

    def shape(self, n_way: int | None = None, k_shot: int | None = None) -> TaskShape:
        """The sampler's task shape with `n_way` and `k_shot` where given, checked against the
        dataset's splits as the sampler's own shape is."""
        if n_way is None and k_shot is None:  # checked when the sampler was built
            return TaskShape(self.n_way, self.k_shot, self.query_size)
        n_way = self.n_way if n_way is None else check_whole_number("n_way", n_way)
        k_shot = self.k_shot if k_shot is None else check_whole_number("k_shot", k_shot)
        cfg = copy.deepcopy(self.config)
        apply_settings(cfg, {"n_way": n_way, "k_shot": k_shot})
        check_task_settings(cfg)
        check_episode_fits(cfg, self.tasks)
        return TaskShape(n_way, k_shot, self.query_size)

    def sample(self, batch_size: int = 1) -> TaskBatch:
        """The next batch of `batch_size` tasks of this sampler's stream (support_x [B, N*K, ...]);
        `.task(i)` is one of them, `.tasks()` all of them in turn."""
        check_whole_number("batch_size", batch_size)
        batch = self.stream(batch_size)[self.batches_drawn]
        self.batches_drawn += 1
        return batch

    def fixed_episodes(self, count: int, n_way: int | None = None,
                       k_shot: int | None = None) -> Iterator[TaskBatch]:
        """Episodes 0..count-1 of the seed, each a batch of one task, whatever was sampled
        before; the shape defaults to the sampler's."""
        check_whole_number("count", count)
        stream = self.stream(1, self.shape(n_way, k_shot))
        return (stream[index] for index in range(count))
