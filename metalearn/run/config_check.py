"""Checks of a composed config before anything is built or trained: every key a setting of its
group's target (`validate`), types and ranges, and the fit of the algorithm and the episodes to
the data.

Each problem is reported as one line naming the key, the value and what is allowed
(a UserError, which the entry points print without a traceback).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import torch
from hydra.utils import get_class, get_object
from omegaconf import DictConfig, OmegaConf

from metalearn.data.task_family import EpisodeSettings, TaskFamily
from metalearn.errors import UserError, check_positive_number, check_whole_number
from metalearn.paths import component_name

#: the constructor arguments the builder passes, by config group
INJECTED_ARGUMENTS = {
    "backbone": ("input_shape",),
    "episode": ("tasks", "training_stream"),
    "algorithm": ("backbone", "task_type", "output_dim", "train_classes"),
}
#: groups whose keys are constructor arguments of their `_target_`
BUILT_GROUPS = ("dataset", "backbone", "episode", "algorithm")
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


def accepted_arguments(target: type | Callable) -> list[str]:
    """The keyword arguments a class's constructor (or a function) takes, following `**kwargs`
    passed on to the base classes (as the algorithms pass theirs to EpisodicModule)."""
    if not isinstance(target, type):
        return [p.name for p in inspect.signature(target).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names: list[str] = []
    for klass in target.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names += [p.name for p in parameters
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def settings_of(group: str, node: DictConfig) -> list[str]:
    """The settings a config of `group` may hold: its target's constructor arguments, less the
    injected ones."""
    injected = INJECTED_ARGUMENTS.get(group, ())
    return [name for name in accepted_arguments(get_object(node._target_))
            if name not in injected]


def check_known_keys(cfg: DictConfig) -> None:
    """Every key of the built groups must be a setting of its target."""
    for group in BUILT_GROUPS:
        node = cfg.get(group)
        if not node or "_target_" not in node:
            continue
        settings = settings_of(group, node)
        for key in node:
            if not key.startswith("_") and key not in settings:
                raise UserError(f"{group}.{key} is not a setting of {node._target_}; its "
                                f"settings are: {', '.join(sorted(settings))}")


def validate(cfg: DictConfig) -> None:
    """The checks that need no data: known keys, then types and ranges."""
    check_known_keys(cfg)
    check_config(cfg)


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
    if algorithm.trains_on_examples:
        tasks.num_examples("train")  # a family without labelled examples refuses in one line
    train_n_way = cfg.episode.get("train_n_way")
    if train_n_way and train_n_way != cfg.episode.n_way and not algorithm.supports_other_train_way:
        raise UserError(
            f"episode.train_n_way={train_n_way} differs from episode.n_way={cfg.episode.n_way}, but "
            f"{component_name(cfg.algorithm)} has one output per class; leave train_n_way null"
        )


def check_episode_fits(cfg: DictConfig, tasks: TaskFamily) -> None:
    """Task shape against what each split of the dataset holds (the family's own check)."""
    episode = EpisodeSettings(**{key: cfg.episode.get(key) for key in EpisodeSettings._fields})
    tasks.check_fits(episode, component_name(cfg.dataset))
