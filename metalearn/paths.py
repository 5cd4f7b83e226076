"""Where the project's files go: the repository root, and the `${project_root:}` resolver the
configs use for it (configs/paths/default.yaml); `${task_family:dataset,env}`, the chosen
one of the two; also `${minus:a,b}`, a - b, for a setting that
follows from another (a paper's 20 - k training queries per class at k shots); and the name a
config gives its component."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def project_root() -> str:
    """The folder holding configs/ (the repository), where data/ and outputs/ go by default."""
    return str(Path(__file__).resolve().parents[1])


CONFIG_DIR = Path(project_root()) / "configs"

OmegaConf.register_new_resolver("project_root", project_root, replace=True)
OmegaConf.register_new_resolver("minus", lambda a, b: a - b, replace=True)


def task_family(dataset: str | None, env: str | None) -> str:
    """The name of a run's task family from the dataset and env choices: the env where one is
    chosen (meta-reinforcement learning), else the dataset (run directories are named so)."""
    return str(env) if env not in (None, "None", "null") else str(dataset)


OmegaConf.register_new_resolver("task_family", task_family, replace=True)


def component_name(node: DictConfig) -> str:
    """A config's name by our convention: configs/<group>/<name>.yaml targets .../<name>.py."""
    return node._target_.rsplit(".", 2)[-2]


def family_name(cfg: DictConfig) -> str:
    """The name of a run's task family: its env's (env.name, the part after the module of a
    user's class) for meta-reinforcement learning, else its dataset config's component name."""
    if cfg.get("env") is not None:
        return str(cfg.env.name).replace(":", ".").rsplit(".", 1)[-1]
    return component_name(cfg.dataset)


def family_choice(cfg: DictConfig) -> str:
    """The run's task family as it is chosen on a command line: 'dataset=omniglot' or
    'env=navigation2d'."""
    return f"{'env' if cfg.get('env') is not None else 'dataset'}={family_name(cfg)}"
