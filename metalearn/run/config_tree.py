"""The composed config as a rich tree: printed when a run starts and saved in its directory."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

from metalearn.files import write_text

# the groups in the order a reader checks them; the other keys follow in composition order
GROUP_ORDER = ("dataset", "episode", "algorithm", "backbone", "trainer", "callbacks", "logger",
               "paths")
LOG_WIDTH = 120  # config_tree.log's line width (long values wrap)


def config_tree(cfg: DictConfig) -> Tree:
    """One branch per top-level key, its resolved YAML beneath (as lightning-hydra-template's
    print_config_tree)."""
    tree = Tree("config", style="dim", guide_style="dim")
    keys = [key for key in GROUP_ORDER if key in cfg]
    keys += [key for key in cfg if key not in GROUP_ORDER]
    for key in keys:
        node = cfg[key]
        text = (OmegaConf.to_yaml(node, resolve=True) if isinstance(node, (DictConfig, ListConfig))
                else str(node))
        tree.add(key, style="bold").add(Syntax(text, "yaml", word_wrap=True))
    return tree


def write_config_tree(cfg: DictConfig, path: Path, show: bool = True) -> None:
    """Saves the config tree without colours or trailing padding at `path`, and prints it with
    `show`."""
    tree = config_tree(cfg)
    if show:
        Console().print(tree)
    plain = Console(file=StringIO(), width=LOG_WIDTH)
    plain.print(tree)
    write_text(path, "".join(line.rstrip() + "\n" for line in plain.file.getvalue().splitlines()))
