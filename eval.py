"""Evaluate a checkpoint on the meta-test split: python eval.py ckpt_path=PATH [eval.shots=[1,5]]"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from metalearn.cli import run_cli
from metalearn.run.allocator import tune_malloc
from metalearn.run.compose import moved_key_overrides
from metalearn.run.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_cli(evaluate, cfg, HydraConfig.get().overrides.task)


if __name__ == "__main__":
    tune_malloc()  # before anything is built (metalearn/run/allocator.py says why)
    sys.argv = moved_key_overrides(sys.argv)
    main()
