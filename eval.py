"""Evaluate a checkpoint on the meta-test split: python eval.py ckpt_path=PATH [eval.shots=[1,5]]"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from metalearn.cli import run_cli, start_hydra_app

CONFIG = "eval"


@hydra.main(version_base="1.3", config_path="configs", config_name=CONFIG)
def main(cfg: DictConfig) -> None:
    # imported here, once the command line is checked: it loads torch and Lightning
    from metalearn.run.evaluate import evaluate

    run_cli(evaluate, cfg, HydraConfig.get().overrides.task)


if __name__ == "__main__":
    start_hydra_app(CONFIG)
    main()
