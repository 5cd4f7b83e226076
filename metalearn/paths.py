"""Where the project's files go: the repository root, and the `${project_root:}` resolver the
configs use for it (configs/paths/default.yaml); also `${minus:a,b}`, a - b, for a setting that
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


def component_name(node: DictConfig) -> str:
    """A config's name by our convention: configs/<group>/<name>.yaml targets .../<name>.py."""
    return node._target_.rsplit(".", 2)[-2]
