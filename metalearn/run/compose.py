"""The train config composed outside the Hydra app, for the Python API, meta_learning.py and tests.

`compose_config` gives the config `python train.py <overrides>` would run with. `apply_settings`
then sets flat names such as `inner_lr` or `k_shot` (the API's keyword arguments and
meta_learning.py's flags) on the key of the config that holds them.
`config_choices` lists the names a group accepts: Hydra's own options for the search path of
the overrides, so a user's configs found through `hydra.searchpath=[file://DIR]` count as ours do.
`composed` is the composition all of them share, also the entry points' check of their command
line before Hydra runs it (metalearn/cli): a mistake Hydra reports (an unknown name or key) is
one line naming the group and its choices, or the key and the nearest one; a key that a `+`
override adds must be a setting. It imports neither torch nor Lightning.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from metalearn.errors import UserError
from metalearn.paths import CONFIG_DIR, component_name
from metalearn.run.config_check import check_added_keys, not_a_setting, settings_of

# other names for an algorithm (the flag-style front end and the API accept them)
ALGORITHM_ALIASES = {"prototypical": "protonet"}
# top-level keys of configs/train.yaml that are settings of a run
RUN_SETTINGS = ("seed", "num_epochs", "eval_frequency", "save_frequency")
# where flat names are looked up, in order (the algorithm's before the episode's)
SETTING_GROUPS = ("algorithm", "episode", "dataset", "backbone")
#: config keys that moved, old -> new: the old key still works, with a warning
MOVED_KEYS = {"algorithm.meta_batch_size": "episode.meta_batch_size"}
#: the entry points (by config name) whose model and data come from a checkpoint's config
CHECKPOINT_APPS = ("eval", "compare")
#: the groups whose choice the checkpoint makes: on those entry points' command lines, a key of
#: theirs may be one the app's own default (protonet on Omniglot) lacks
CHECKPOINT_GROUPS = ("algorithm", "backbone", "dataset", "env")


def moved_key_overrides(overrides: Iterable[str]) -> list[str]:
    """Command-line overrides with moved keys under their new names, each move announced on
    stderr ('algorithm.meta_batch_size=4' -> 'episode.meta_batch_size=4')."""
    renamed = []
    for override in overrides:
        for old, new in MOVED_KEYS.items():
            match = re.fullmatch(rf"([+~]*){re.escape(old)}(=.*)?", override, re.DOTALL)
            if match:
                print(f"warning: {old} is now {new}; {old} will stop working in a later version",
                      file=sys.stderr)
                override = f"{match.group(1)}{new}{match.group(2) or ''}"
        renamed.append(override)
    return renamed


def checkpoint_overrides(config_name: str, overrides: Iterable[str]) -> list[str]:
    """eval.py's and compare.py's overrides of the checkpoint's groups' keys as `++key=value`
    (set, or add where the app's default config lacks the key: `algorithm.test_inner_steps=3`
    for a MAML checkpoint); metalearn/run/stored_runs.py then checks each against the
    checkpoint's config. Other entry points' overrides are returned as they are."""
    if config_name not in CHECKPOINT_APPS:
        return list(overrides)
    groups = "|".join(CHECKPOINT_GROUPS)
    return [f"++{override}" if re.match(rf"({groups})\.", override) else override
            for override in overrides]


def added_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys that `+key=value` overrides add, not the config groups they add
    (`+dataset/augment=natural`, `+experiment=...`). (`++key=value` sets a key or adds it: the
    user forces it.)"""
    overrides = list(overrides)
    parsed = OverridesParser.create().parse_overrides(overrides)
    added = [override.key_or_group for override in parsed if override.is_add()]
    return [key for key in added if "/" not in key
            and ("." in key or not config_choices(key, overrides))]


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys (or groups) named by command-line overrides, such as 'episode.k_shot'."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [override.key_or_group for override in parsed]


def upgrade_stored_config(cfg: DictConfig) -> DictConfig:
    """A config stored by an earlier version (in a checkpoint) with moved keys at their new
    places."""
    for old, new in MOVED_KEYS.items():
        value = OmegaConf.select(cfg, old, default=None)
        if value is None:
            continue
        group, key = old.rsplit(".", 1)
        with open_dict(cfg):
            if OmegaConf.select(cfg, new, default=None) is None:
                OmegaConf.update(cfg, new, value, force_add=True)
            del OmegaConf.select(cfg, group)[key]
    return cfg


def config_choices(group: str, overrides: Iterable[str] = ()) -> list[str]:
    """The names `<group>=<name>` accepts in `python train.py <overrides>`: the group's configs
    in Hydra's search path, which is configs/ and the directories of a
    `hydra.searchpath=[file://DIR]` (or `pkg://`) among the overrides (a user's own parts)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_choices(group, overrides)


def hydra_choices(group: str, overrides: Iterable[str] = (),
                  config_name: str | None = "train") -> list[str]:
    """The group's configs in the config repository of the Hydra now initialised (an app's, or
    `initialize_config_dir`'s), with the search path that `overrides` and the primary config
    give: the options Hydra accepts."""
    loader = GlobalHydra.instance().config_loader()
    try:
        return sorted(loader.get_group_options(group, config_name=config_name,
                                               overrides=list(overrides)))
    except HydraException as error:
        raise UserError(one_line(str(error))) from None


def unknown_choice(group: str, name: str, choices: Iterable[str]) -> UserError:
    """The error for a name that is not among a group's choices (an algorithm's lists the
    aliases too)."""
    aliases = ", ".join(f"{alias} = {target}" for alias, target in ALGORITHM_ALIASES.items())
    return UserError(f"unknown {group} {name!r}; choose one of: {', '.join(choices)}"
                     + (f" (aliases: {aliases})" if group == "algorithm" else ""))


def checked_choice(group: str, name: str, overrides: Iterable[str] = ()) -> str:
    """`name` if it is a config of the group with these overrides (`config_choices`); otherwise
    a UserError listing the choices."""
    choices = config_choices(group, overrides)
    if name not in choices:
        raise unknown_choice(group, name, choices)
    return name


def algorithm_name(name: str, overrides: Iterable[str] = ()) -> str:
    """The algorithm config a name or alias selects with these overrides; an unknown one is a
    UserError."""
    return checked_choice("algorithm", ALGORITHM_ALIASES.get(name, name), overrides)


def default_output_dir(cfg: DictConfig) -> Path:
    """Where train.py would put this run: outputs/runs/<algorithm>_<dataset>/<time>."""
    run_name = f"{component_name(cfg.algorithm)}_{component_name(cfg.dataset)}"
    return Path(cfg.paths.log_dir) / "runs" / run_name / time.strftime("%Y-%m-%d_%H-%M-%S")


def composition_error(error: HydraException, overrides: list[str],
                      config_name: str) -> UserError:
    """A mistake Hydra found while composing, in one line: a name that is not a config of its
    group lists the group's choices; a key the config does not hold names the nearest key (or
    says that a component's setting needs a `+`); anything else is Hydra's message on one
    line."""
    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, name = (error.missing_cfg_file or "").rpartition("/")
        if group:
            return unknown_choice(group, name, sorted(error.options))
    key = getattr(error.__cause__, "full_key", None)
    if isinstance(error.__cause__, (ConfigAttributeError, ConfigKeyError)) and key:
        others = [override.input_line
                  for override in OverridesParser.create().parse_overrides(overrides)
                  if override.key_or_group != key
                  and not override.key_or_group.startswith(f"{key}.")
                  # a node assigned whole (baselines={a: ...}) that brought the key
                  and not (key.startswith(f"{override.key_or_group}.")
                           and isinstance(override.value(), dict))]
        # what the config holds without the key (it may raise the next mistake instead)
        return not_a_setting(hydra_compose(others, config_name), key)
    return UserError(one_line(str(error)))


def one_line(hydra_message: str) -> str:
    """A Hydra composition error in one line: 'Could not find 'algorithm/foo'; Available options
    in 'algorithm': anil, fomaml, ...'."""
    lines = [line.strip() for line in hydra_message.split("Config search path")[0].splitlines()
             if line.strip()]
    if len(lines) > 2 and lines[1].endswith(":"):
        return f"{lines[0]}; {lines[1]} {', '.join(lines[2:])}"
    return "; ".join(line.rstrip(".") for line in lines)


def hydra_compose(overrides: list[str], config_name: str, hydra_node: bool = False) -> DictConfig:
    """Hydra's composition of the config `config_name` with `overrides`; a mistake is a one-line
    UserError (`composition_error`). With `hydra_node`, the config keeps Hydra's own node (its
    run and sweep directories)."""
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name, overrides=[*overrides, "paths.output_dir=unset"],
                           return_hydra_config=hydra_node)
    except HydraException as error:
        raise composition_error(error, overrides, config_name) from None


def composed(overrides: Iterable[str] = (), config_name: str = "train",
             hydra_node: bool = False) -> DictConfig:
    """The config of `python <config_name>.py <overrides>` (paths.output_dir not set): moved keys
    renamed, eval.py's and compare.py's keys of the checkpoint's groups taken as the apps take
    them (`checkpoint_overrides`), and each key a `+` adds checked to be a setting."""
    overrides = checkpoint_overrides(config_name, moved_key_overrides(overrides))
    cfg = hydra_compose(overrides, config_name, hydra_node)
    check_added_keys(cfg, added_keys(overrides))
    return cfg


def compose_config(overrides: Iterable[str] = (), output_dir: str | Path | None = None,
                   config_name: str = "train") -> DictConfig:
    """The config of `python train.py <overrides>`, writing into output_dir.

    Without output_dir, a new directory where train.py would put the run:
    outputs/runs/<algorithm>_<dataset>/<time>.
    """
    cfg = composed(overrides, config_name)
    cfg.paths.output_dir = str(output_dir or default_output_dir(cfg))
    return cfg


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The overrides of each job a command line starts: itself for a run; for a multirun, one
    list per combination of its sweeps' values (`k=1,5`, `range(1,4)`), as Hydra's basic
    sweeper makes them. A sweep of another kind (`interval(...)`, which the Optuna sweeper
    draws from) is left out: each job checks the value it gets."""
    if not multirun:
        return [overrides]
    values = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            values.append([f"{key}={override.get_value_element_as_str()}"])
        elif override.is_discrete_sweep():
            values.append([f"{key}={value}" for value in override.sweep_string_iterator()])
    return [list(job) for job in itertools.product(*values)]


def hydra_output_dir(cfg: DictConfig, multirun: bool) -> Path:
    """The directory Hydra makes for a command whose config, with Hydra's node, is `cfg`:
    hydra.run.dir, or hydra.sweep.dir for a multirun, resolved as Hydra resolves them (its
    `${hydra:...}` reads the config Hydra holds, set for the moment)."""
    held = HydraConfig.instance()
    before = held.cfg
    held.set_config(cfg)
    try:
        return Path(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
    finally:
        held.cfg = before


def command_line_configs(overrides: list[str], config_name: str,
                         multirun: bool) -> tuple[list[DictConfig], Path]:
    """The config of each job of a Hydra command line (`job_overrides`, `composed`), without
    Hydra's node, and the directory Hydra makes for the command (`hydra_output_dir`)."""
    configs = [composed(job, config_name, hydra_node=True)
               for job in job_overrides(overrides, multirun)]
    output_dir = hydra_output_dir(configs[0], multirun)
    for cfg in configs:
        with open_dict(cfg):
            del cfg["hydra"]
    return configs, output_dir


def setting_keys(cfg: DictConfig) -> dict[str, str]:
    """Every flat setting name of this config and the key that holds it ('inner_lr' ->
    'algorithm.inner_lr'), including constructor arguments the config file leaves at their
    default."""
    keys = {name: name for name in RUN_SETTINGS}
    for group in SETTING_GROUPS:
        node = cfg.get(group)
        if not node or "_target_" not in node:
            continue
        names = (set(settings_of(group, node)) | set(node)) - {"seed", "model"}
        for name in sorted(names):
            if not name.startswith("_"):
                keys.setdefault(name, f"{group}.{name}")
    return keys


def apply_settings(cfg: DictConfig, settings: Mapping[str, Any], what: str = "setting") -> None:
    """Sets each flat name's value on its key; an unknown name is a UserError listing the
    valid ones. `what` names the settings in that message (the API says 'hyperparameter')."""
    keys = setting_keys(cfg)
    for name, value in settings.items():
        if name not in keys:
            raise UserError(
                f"unknown {what} {name!r} for {component_name(cfg.algorithm)} on "
                f"{component_name(cfg.dataset)}; valid: {', '.join(sorted(keys))}"
            )
        with open_dict(cfg):
            OmegaConf.update(cfg, keys[name], value, merge=False, force_add=True)
