"""Trained runs brought back from their checkpoints, for eval.py and compare.py: the checkpoint,
its training config with the user's overrides applied (`stored_run`; the architecture's keys
refused), and the model that config builds with the checkpoint's weights, or initialised at
random as training starts from (`tested_model`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import lightning as L
from omegaconf import DictConfig, OmegaConf

from metalearn.algorithms.base import EpisodicModule
from metalearn.data.datamodule import EpisodicDataModule
from metalearn.data.task_family import TaskFamily
from metalearn.data.tokenizers import Tokenizer, tokenizer_from_state
from metalearn.errors import UserError
from metalearn.paths import component_name
from metalearn.run.build import instantiate_run
from metalearn.run.checkpoints import CONFIG_KEY, RUN_STATE_KEY, load_checkpoint
from metalearn.run.compose import override_keys, upgrade_stored_config

#: keys of eval.yaml that are not training settings, never copied into the checkpoint's config
EVAL_ONLY_KEYS = ("ckpt_path", "ckpt_paths", "eval", "compare", "hydra")
#: groups that make the model's architecture: evaluation cannot change them ...
ARCHITECTURE_GROUPS = ("algorithm", "backbone")
#: ... except these, which act at test time only
TEST_TIME_KEYS = ("algorithm.test_inner_steps", "algorithm.transductive_bn")


def trained_input_shape(checkpoint: dict) -> tuple[int, ...] | None:
    """The input shape the checkpoint's model was built for (None from earlier versions)."""
    shape = (checkpoint.get(RUN_STATE_KEY) or {}).get("input_shape")
    return None if shape is None else tuple(shape)


def fit_input_shape(dataset: DictConfig, input_shape: tuple[int, ...] | None,
                    changed: list[str]) -> None:
    """Sets an image dataset's image_size and channels to the trained input shape (C, S, S), a
    text dataset's max_length to the trained (max_length,), unless the command line sets them."""
    if input_shape is None:
        return
    if len(input_shape) == 3 and input_shape[1] == input_shape[2]:
        fitted = {"image_size": input_shape[1], "channels": input_shape[0]}
    elif len(input_shape) == 1:
        fitted = {"max_length": input_shape[0]}
    else:
        return
    for key, value in fitted.items():
        if key in dataset and f"dataset.{key}" not in changed:
            dataset[key] = value


@dataclass
class StoredRun:
    """A checkpoint and the config it is tested with: its training config, with the keys the user
    overrode (`changed`) replaced."""

    path: str
    checkpoint: dict
    cfg: DictConfig
    changed: list[str]

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return trained_input_shape(self.checkpoint)

    @property
    def tokenizer_state(self) -> dict | None:
        """The state of the tokenizer a text model was trained with; None for other data."""
        return (self.checkpoint.get(RUN_STATE_KEY) or {}).get("tokenizer")

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer a text model was trained with, which encodes the texts it is tested on
        (another dataset's too); None for other data."""
        state = self.tokenizer_state
        return None if state is None else tokenizer_from_state(state)

    @property
    def trained_on(self) -> str:
        return component_name(OmegaConf.create(self.checkpoint[CONFIG_KEY]).dataset)


def stored_run(path: str, cfg: DictConfig, overrides: Iterable[str], setting: str = "ckpt_path",
               tool: str = "eval.py") -> StoredRun:
    """Loads the checkpoint at `path` (named by `setting` in errors) and applies the
    overrides of the eval or compare config `cfg` (of `tool`) to its training config.

    Of `cfg`, only the keys the user overrode replace the stored ones; the architecture's keys
    are refused, except those that act at test time only.
    """
    checkpoint = load_checkpoint(path, setting)
    run_cfg = upgrade_stored_config(OmegaConf.create(checkpoint[CONFIG_KEY]))
    resolved_eval = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    changed = [key for key in override_keys(overrides) if key.split(".")[0] not in EVAL_ONLY_KEYS]
    for key in changed:
        if key.split(".")[0] in ARCHITECTURE_GROUPS and key not in TEST_TIME_KEYS:
            raise UserError(
                f"{tool} cannot change {key}: it is part of the model the checkpoint holds "
                f"(trained with {key}={OmegaConf.select(run_cfg, key, default=None)}); evaluation "
                f"can change episode.*, dataset.*, trainer.* and {', '.join(TEST_TIME_KEYS)}")
        OmegaConf.update(run_cfg, key, OmegaConf.select(resolved_eval, key), merge=False)
    if "train_n_way" in run_cfg.episode:  # the shape of meta-training tasks plays no part in testing
        run_cfg.episode.train_n_way = run_cfg.episode.train_query_size = None
    run = StoredRun(path, checkpoint, run_cfg, changed)
    if "dataset" in changed:  # another dataset: its images at the size the model was trained on
        fit_input_shape(run_cfg.dataset, run.input_shape, changed)
    return run


def tested_model(run: StoredRun, cfg: DictConfig, random_init_seed: int | None = None,
                 tasks: TaskFamily | None = None) -> tuple[EpisodicDataModule, EpisodicModule]:
    """The data module and model `cfg` builds, with the checkpoint's weights, or, given
    `random_init_seed`, initialised at random as training starts from (seeded with it).
    `tasks`: the task family when it is already loaded."""
    if random_init_seed is not None:
        L.seed_everything(random_init_seed, verbose=False)
    datamodule, model = instantiate_run(cfg, tasks=tasks, tokenizer=run.tokenizer)
    if run.input_shape is not None and tuple(datamodule.tasks.input_shape) != run.input_shape:
        raise UserError(f"dataset={component_name(cfg.dataset)} gives inputs of shape "
                        f"{tuple(datamodule.tasks.input_shape)}; the model was trained on "
                        f"{run.trained_on}'s {run.input_shape}")
    if random_init_seed is not None:
        return datamodule, model
    try:
        model.load_state_dict(run.checkpoint["state_dict"])
    except RuntimeError as error:
        raise UserError(f"the checkpoint's weights do not fit the model these settings build "
                        f"({str(error).splitlines()[1].strip()}); of the overrides, "
                        f"{', '.join(run.changed)} may change its shape (episode.n_way, for an "
                        "algorithm with one output per class)") from None
    return datamodule, model
