"""Meta-train, validate and test one algorithm: python train.py algorithm=protonet episode.k_shot=1"""

import hydra
from omegaconf import DictConfig

from metalearn.cli import run_cli, start_hydra_app

CONFIG = "train"


@hydra.main(version_base="1.3", config_path="configs", config_name=CONFIG)
def main(cfg: DictConfig) -> float | None:
    # imported here, once the command line is checked: it loads torch and Lightning
    from metalearn.run.training import train_job

    # hyperparameter sweepers (hparams_search=...) optimise the value main returns; Optuna
    # records a trial that failed on a user's mistake (it returns None) as failed and goes on
    return run_cli(train_job, cfg)


if __name__ == "__main__":
    start_hydra_app(CONFIG)
    main()
