"""Building what a composed config describes: the task family, the data module and the algorithm.

Every config group with a `_target_` is instantiated with its keys as constructor arguments, plus
the ones listed in INJECTED_ARGUMENTS, which the builder passes itself (from the data or from the
other groups) and a config never sets. A key that is not a constructor argument is an error
naming the valid ones, before anything is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from metalearn.errors import UserError
from metalearn.models.backbones import UserBackbone
from metalearn.run.config_check import (
    check_algorithm_fits,
    check_config,
    check_episode_fits,
    component_name,
)

if TYPE_CHECKING:  # building imports Lightning only through the classes it instantiates
    from torch import nn

    from metalearn.algorithms.base import EpisodicModule
    from metalearn.data.datamodule import EpisodicDataModule
    from metalearn.data.task_family import TaskFamily

#: the constructor arguments the builder passes, by config group
INJECTED_ARGUMENTS = {
    "backbone": ("input_shape",),
    "episode": ("tasks", "pretraining_batch_size"),
    "algorithm": ("backbone", "task_type", "output_dim", "train_classes"),
}
#: groups whose keys are constructor arguments of their `_target_`
BUILT_GROUPS = ("dataset", "backbone", "episode", "algorithm")
USER_BACKBONE = f"{UserBackbone.__module__}.{UserBackbone.__qualname__}"


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


def find_user_error(error: BaseException | None) -> UserError | None:
    """The UserError behind an exception (Hydra's instantiate wraps what constructors raise)."""
    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__ or error.__context__
    return None


def find_cause(error: BaseException) -> BaseException:
    """The exception that started a chain (what a constructor raised inside instantiate)."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    return error


def instantiate_trainer(node: DictConfig, **kwargs) -> Any:
    """Lightning's Trainer from the trainer config; a setting Lightning refuses (an unknown
    precision, a GPU that is not there) is a UserError in one line."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        message = str(find_cause(error)).strip().splitlines()[0]
        raise UserError(f"trainer: {message}") from None


def instantiate_checked(node: DictConfig, **kwargs) -> Any:
    """hydra.utils.instantiate, letting a UserError raised by a constructor through as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        raise user_error from None


def build(cfg: DictConfig, model: nn.Module | None = None,
          tasks: TaskFamily | None = None) -> tuple[EpisodicDataModule, EpisodicModule]:
    """Checks the config, then instantiates the data module and the algorithm it describes.

    `model`, a user's network, is the backbone of a config whose backbone is a UserBackbone.
    `tasks`: the task family when it is already at hand (a TaskSampler's); otherwise the config's
    dataset, instantiated.
    """
    validate(cfg)
    if tasks is None:
        tasks = instantiate_checked(cfg.dataset)
    check_algorithm_fits(cfg, tasks)
    check_episode_fits(cfg, tasks)
    if model is not None and cfg.backbone._target_ != USER_BACKBONE:
        raise UserError(f"this config's backbone is {component_name(cfg.backbone)}, not a "
                        "user-defined network; build it without model=")
    backbone_args = {"model": model} if model is not None else {}
    backbone = instantiate_checked(cfg.backbone, input_shape=tasks.input_shape, **backbone_args)
    output_dim = cfg.episode.n_way if tasks.task_type == "classification" else tasks.output_dim
    data_args = {}
    if "train_classes" in accepted_arguments(get_object(cfg.algorithm._target_)):
        data_args["train_classes"] = tasks.num_classes("train")  # what pre-training classifies
    algorithm = instantiate_checked(cfg.algorithm, backbone=backbone, task_type=tasks.task_type,
                                    output_dim=output_dim, **data_args)
    return build_datamodule(cfg, tasks, algorithm), algorithm


def build_datamodule(cfg: DictConfig, tasks: TaskFamily,
                     algorithm: EpisodicModule) -> EpisodicDataModule:
    """The episode config's data module for `tasks`; an algorithm that pre-trains on examples
    (the fine-tuning baselines) gets batches of meta-train examples to train on."""
    batch_size = algorithm.batch_size if algorithm.trains_on_examples else None
    return instantiate(cfg.episode, tasks=tasks, pretraining_batch_size=batch_size)


def instantiate_all(nodes: DictConfig | None) -> list[Any]:
    """Instantiates every `_target_` node of a group such as callbacks or logger."""
    if not nodes:
        return []
    return [instantiate_checked(node) for node in nodes.values() if node and "_target_" in node]
