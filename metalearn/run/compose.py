"""The train config composed outside the Hydra app, for the Python API, meta_learning.py and tests.

`compose_config` gives the config `python train.py <overrides>` would run with. `apply_settings`
then sets flat names such as `inner_lr` or `k_shot` (the API's keyword arguments and
meta_learning.py's flags) on the key of the config that holds them.
`config_choices` lists the names a group accepts: Hydra's own options for the search path of
the overrides, so a user's configs found through `hydra.searchpath=[file://DIR]` count as ours do.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from metalearn.errors import UserError
from metalearn.paths import CONFIG_DIR, component_name
from metalearn.run.config_check import settings_of

# other names for an algorithm (the flag-style front end and the API accept them)
ALGORITHM_ALIASES = {"prototypical": "protonet"}
# top-level keys of configs/train.yaml that are settings of a run
RUN_SETTINGS = ("seed", "num_epochs", "eval_frequency", "save_frequency")
# where flat names are looked up, in order (the algorithm's before the episode's)
SETTING_GROUPS = ("algorithm", "episode", "dataset", "backbone")
#: config keys that moved, old -> new: the old key still works, with a warning
MOVED_KEYS = {"algorithm.meta_batch_size": "episode.meta_batch_size"}


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


def one_line(hydra_message: str) -> str:
    """A Hydra composition error in one line: 'Could not find 'algorithm/foo'; Available options
    in 'algorithm': anil, fomaml, ...'."""
    lines = [line.strip() for line in hydra_message.split("Config search path")[0].splitlines()
             if line.strip()]
    if len(lines) > 2 and lines[1].endswith(":"):
        return f"{lines[0]}; {lines[1]} {', '.join(lines[2:])}"
    return "; ".join(line.rstrip(".") for line in lines)


def compose_config(overrides: Iterable[str] = (), output_dir: str | Path | None = None,
                   config_name: str = "train") -> DictConfig:
    """The config of `python train.py <overrides>`, writing into output_dir.

    Without output_dir, a new directory where train.py would put the run:
    outputs/runs/<algorithm>_<dataset>/<time>.
    """
    overrides = moved_key_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=[*overrides, "paths.output_dir=unset"])
    except HydraException as error:
        raise UserError(one_line(str(error))) from None
    cfg.paths.output_dir = str(output_dir or default_output_dir(cfg))
    return cfg


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
