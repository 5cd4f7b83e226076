"""Compare checkpoints on the same test episodes: python compare.py ckpt_paths=[a.ckpt,b.ckpt]"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from metalearn.cli import run_cli
from metalearn.run.allocator import tune_malloc
from metalearn.run.compare import compare
from metalearn.run.compose import moved_key_overrides


@hydra.main(version_base="1.3", config_path="configs", config_name="compare")
def main(cfg: DictConfig) -> None:
    run_cli(compare, cfg, HydraConfig.get().overrides.task)


if __name__ == "__main__":
    tune_malloc()  # before anything is built (metalearn/run/allocator.py says why)
    sys.argv = moved_key_overrides(sys.argv)
    main()
