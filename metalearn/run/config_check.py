"""Checks of a composed config before anything is built or trained.

Each problem is reported as one line naming the key, the value and what is allowed
(a UserError, which the entry points print without a traceback).
"""

from __future__ import annotations

import os

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from metalearn.data.task_family import SPLITS, ClassificationTaskFamily, TaskFamily
from metalearn.errors import UserError, check_positive_number, check_whole_number

# keys that must be integers >= 1 wherever they are present
POSITIVE_INTS = (
    "episode.n_way", "episode.k_shot", "episode.query_size", "episode.train_n_way",
    "episode.train_query_size", "episode.num_tasks",
    "episode.val_episodes", "episode.test_episodes", "episode.eval_batch_size",
    "episode.meta_batch_size", "algorithm.inner_steps", "algorithm.test_inner_steps",
    "algorithm.embedding_dim", "algorithm.processing_steps", "algorithm.relation_channels",
    "algorithm.hidden_units", "algorithm.memory_slots", "algorithm.memory_width",
    "algorithm.read_heads", "algorithm.write_heads", "algorithm.controller_size",
    "algorithm.meta_hidden_size", "algorithm.batch_size", "algorithm.finetune_epochs",
    "algorithm.finetune_batch_size", "num_epochs", "eval_frequency", "save_frequency",
    "dataset.image_size", "backbone.hidden_channels", "backbone.num_blocks",
)
# keys that must be numbers > 0 wherever they are set (null leaves gradient clipping off)
POSITIVE_FLOATS = ("algorithm.outer_lr", "algorithm.inner_lr", "algorithm.cosine_scale",
                   "algorithm.finetune_lr", "algorithm.scale", "algorithm.distill_temperature",
                   "algorithm.scheduler.gamma", "trainer.gradient_clip_val")


def component_name(node: DictConfig) -> str:
    """A config's name by our convention: configs/<group>/<name>.yaml targets .../<name>.py."""
    return node._target_.rsplit(".", 2)[-2]


def check_config(cfg: DictConfig) -> None:
    """Type and range checks that need no data."""
    for key in sorted(OmegaConf.missing_keys(cfg)):
        if key.split(".")[0] in ("dataset", "backbone", "episode", "algorithm", "trainer"):
            raise UserError(f"{key} has no default and must be set, e.g. "
                            f"python train.py {key}=...")
    for key in POSITIVE_INTS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_whole_number(key, value)
    for key in POSITIVE_FLOATS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_positive_number(key, value)
    check_whole_number("seed", cfg.get("seed"), minimum=0)
    check_devices(cfg)
    if cfg.get("test_ckpt") not in ("best", "last"):
        raise UserError(f"test_ckpt={cfg.get('test_ckpt')!r} must be one of: best, last")


def check_devices(cfg: DictConfig) -> None:
    """A GPU run needs a GPU, and a CPU run cannot have more processes than the machine has cores
    (checked before any process starts)."""
    trainer = cfg.get("trainer") or {}
    accelerator, devices = trainer.get("accelerator"), trainer.get("devices")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator}, but this machine has no GPU that "
                        "torch can use; use trainer=cpu (or trainer.accelerator=auto)")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and isinstance(devices, int) and devices > (os.cpu_count() or 1):
        raise UserError(f"trainer.devices={devices} is more than the {os.cpu_count()} CPU cores "
                        "of this machine")


def check_algorithm_fits(cfg: DictConfig, tasks: TaskFamily) -> None:
    algorithm = get_class(cfg.algorithm._target_)
    if tasks.task_type not in algorithm.supported_task_types:
        raise UserError(
            f"algorithm={component_name(cfg.algorithm)} does not support {tasks.task_type} "
            f"(dataset={component_name(cfg.dataset)}); it supports: "
            f"{', '.join(algorithm.supported_task_types)}"
        )
    train_n_way = cfg.episode.get("train_n_way")
    if train_n_way and train_n_way != cfg.episode.n_way and not algorithm.supports_other_train_way:
        raise UserError(
            f"episode.train_n_way={train_n_way} differs from episode.n_way={cfg.episode.n_way}, but "
            f"{component_name(cfg.algorithm)} has one output per class; leave train_n_way null"
        )


def check_episode_fits(cfg: DictConfig, tasks: TaskFamily) -> None:
    """Task shape against what each split of the dataset holds."""
    if hasattr(tasks, "smallest_group"):  # regression tasks that are groups of rows of a table
        group, rows = tasks.smallest_group()
        needed = cfg.episode.k_shot + (cfg.episode.get("train_query_size")
                                       or cfg.episode.query_size)
        if needed > rows:
            raise UserError(f"episode.k_shot + episode.query_size = {needed} is more than the "
                            f"{rows} rows of task {group!r}, the table's smallest; use at most "
                            f"{rows} together")
        return
    if not isinstance(tasks, ClassificationTaskFamily):
        return
    episode, name = cfg.episode, component_name(cfg.dataset)
    ways = {split: ("n_way", episode.n_way) for split in SPLITS}
    queries = [("query_size", episode.query_size)]
    if episode.get("train_n_way"):
        ways["train"] = ("train_n_way", episode.train_n_way)
    if episode.get("train_query_size"):
        queries.append(("train_query_size", episode.train_query_size))
    for split, (key, n_way) in ways.items():
        if n_way < 2:
            raise UserError(f"episode.{key}={n_way}: a classification task needs at least 2 "
                            "classes (with one, every prediction is right)")
        classes = tasks.num_classes(split)
        if n_way > classes:
            raise UserError(
                f"episode.{key}={n_way} is more than the {classes} classes of {name}'s "
                f"meta-{split} split; use at most {classes}"
            )
    smallest, examples = tasks.smallest_class()
    uniform = all(int(part.counts.max()) == examples for part in tasks.splits.values())
    where = (f"examples per class of {name}" if uniform else
             f"examples of {name}'s class {smallest!r}, its smallest")
    for key, query_size in queries:
        if episode.k_shot + query_size > examples:
            hint = "" if uniform or "min_examples" not in cfg.dataset else (
                ", or leave out the classes that small with dataset.min_examples")
            raise UserError(
                f"episode.k_shot + episode.{key} = {episode.k_shot} + {query_size} = "
                f"{episode.k_shot + query_size} is more than the {examples} {where}; use at "
                f"most {examples} together{hint}"
            )
