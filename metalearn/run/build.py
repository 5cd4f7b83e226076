"""Building what a composed config describes: the task family, the data module and the algorithm.

Every config group with a `_target_` is instantiated with its keys as constructor arguments, plus
the ones listed in INJECTED_ARGUMENTS (metalearn/run/config_check.py), which the builder passes
itself (from the data or from the other groups) and a config never sets. An algorithm's default
that the data cannot give (ProtoNet's 20-way training tasks on a dataset of 8 meta-train
classes) is fitted to the data, in one line, before the checks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from metalearn.errors import UserError
from metalearn.models.backbones import UserBackbone
from metalearn.paths import component_name
from metalearn.run.config_check import (
    accepted_arguments,
    check_algorithm_fits,
    check_episode_fits,
    check_task_type,
    validate,
)

if TYPE_CHECKING:  # building imports Lightning only through the classes it instantiates
    from lightning import LightningModule
    from torch import nn

    from metalearn.algorithms.base import EpisodicModule
    from metalearn.data.datamodule import EpisodicDataModule
    from metalearn.data.env_family import EnvFamily
    from metalearn.data.rl_datamodule import EnvDataModule
    from metalearn.data.task_family import TaskFamily
    from metalearn.data.tokenizers import Tokenizer

USER_BACKBONE = f"{UserBackbone.__module__}.{UserBackbone.__qualname__}"

log = logging.getLogger(__name__)


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
    """Checks `cfg` (`validate`), then instantiates what it describes (`instantiate_run`)."""
    validate(cfg)
    return instantiate_run(cfg, model, tasks)


def instantiate_run(cfg: DictConfig, model: nn.Module | None = None,
                    tasks: TaskFamily | None = None, tokenizer: Tokenizer | None = None,
                    ) -> tuple[EpisodicDataModule, EpisodicModule]:
    """The data module and the algorithm that `cfg`, already checked by `validate`, describes,
    after checking them against the data (the jobs validate before they touch a run directory).

    `model`, a user's network, is the backbone of a config whose backbone is a UserBackbone.
    `tasks`: the task family when it is already at hand (a TaskSampler's); otherwise the config's
    dataset, instantiated (`instantiate_dataset`, texts encoded by `tokenizer` where given).
    """
    if cfg.get("env") is not None:
        return instantiate_rl_run(cfg, tasks)
    if tasks is None:
        tasks = instantiate_dataset(cfg, tokenizer)
    check_algorithm_fits(cfg, tasks)
    fit_default_train_n_way(cfg, tasks)
    check_episode_fits(cfg, tasks)
    if model is not None and cfg.backbone._target_ != USER_BACKBONE:
        raise UserError(f"this config's backbone is {component_name(cfg.backbone)}, not a "
                        "user-defined network; build it without model=")
    backbone_args = {"model": model} if model is not None else {}
    accepted = accepted_arguments(get_object(cfg.backbone._target_))
    if "tokenizer" in accepted:
        backbone_args["tokenizer"] = tasks.tokenizer  # a text encoder's vocabulary
    if "categories" in accepted:  # a table's categorical columns fed as codes, to embed
        backbone_args["categories"] = getattr(tasks, "categories", ())
    backbone = instantiate_checked(cfg.backbone, input_shape=tasks.input_shape, **backbone_args)
    output_dim = cfg.episode.n_way if tasks.task_type == "classification" else tasks.output_dim
    data_args = {}
    if "train_classes" in accepted_arguments(get_object(cfg.algorithm._target_)):
        data_args["train_classes"] = tasks.num_classes("train")  # what pre-training classifies
    algorithm = instantiate_checked(cfg.algorithm, backbone=backbone, task_type=tasks.task_type,
                                    output_dim=output_dim, **data_args)
    return build_datamodule(cfg, tasks, algorithm), algorithm


def instantiate_rl_run(cfg: DictConfig, envs: EnvFamily | None = None,
                       ) -> tuple[EnvDataModule, LightningModule]:
    """Meta-reinforcement learning: the env family (`envs` where at hand), the policy built for
    its observation and action spaces, the algorithm that rolls it out in the family's
    environments, and the data module of tasks."""
    if envs is None:
        envs = instantiate_checked(cfg.env)
    check_task_type(cfg, envs.task_type)
    policy = instantiate_checked(cfg.backbone, observation_space=envs.observation_space,
                                 action_space=envs.action_space)
    algorithm = instantiate_checked(cfg.algorithm, backbone=policy, envs=envs)
    return instantiate(cfg.episode, tasks=envs), algorithm


def instantiate_dataset(cfg: DictConfig, tokenizer: Tokenizer | None = None) -> TaskFamily:
    """The config's task family. A dataset of texts is encoded by `tokenizer` where given (the
    one a checkpoint was trained with), else by the backbone's own (a pretrained encoder's
    `own_tokenizer`), else by the word vocabulary it builds from its meta-train texts."""
    if "tokenizer" not in accepted_arguments(get_object(cfg.dataset._target_)):
        return instantiate_checked(cfg.dataset)
    if tokenizer is None:
        own_tokenizer = getattr(get_object(cfg.backbone._target_), "own_tokenizer", None)
        if own_tokenizer is not None:
            settings = {key: value for key, value in OmegaConf.to_container(
                cfg.backbone, resolve=True).items() if not key.startswith("_")}
            tokenizer = own_tokenizer(settings)
    return instantiate_checked(cfg.dataset, tokenizer=tokenizer)


def fit_default_train_n_way(cfg: DictConfig, tasks: TaskFamily) -> None:
    """Caps an algorithm's default meta-training ways at the meta-train classes of a dataset that
    has fewer, saying so in one line. The default is the interpolation that
    configs/algorithm_needs/ writes; a train_n_way the user set is a value, which
    `check_episode_fits` checks as given."""
    episode = cfg.episode
    if (tasks.task_type != "classification" or "train_n_way" not in episode
            or not OmegaConf.is_interpolation(episode, "train_n_way")):
        return
    classes = tasks.num_classes("train")
    if classes is None or episode.train_n_way <= classes:  # None: every task draws new classes
        return
    if classes < episode.n_way:
        episode.train_n_way = None  # n_way does not fit either: its own check says so
        return
    log.info("episode.train_n_way: %s's default of %d is more than the %d classes of the "
             "meta-train split; meta-training on %d-way tasks", component_name(cfg.algorithm),
             episode.train_n_way, classes, classes)
    episode.train_n_way = classes


def build_datamodule(cfg: DictConfig, tasks: TaskFamily,
                     algorithm: EpisodicModule) -> EpisodicDataModule:
    """The episode config's data module for `tasks`, asking `algorithm` what its meta-training
    steps take (`training_stream`)."""
    return instantiate(cfg.episode, tasks=tasks, training_stream=algorithm.training_stream)


def instantiate_all(nodes: DictConfig | None) -> list[Any]:
    """Instantiates every `_target_` node of a group such as callbacks or logger."""
    if not nodes:
        return []
    return [instantiate_checked(node) for node in nodes.values() if node and "_target_" in node]
