"""Meta-train, validate and test one algorithm: python train.py algorithm=protonet episode.k_shot=1"""

import hydra
from omegaconf import DictConfig

from metalearn.run import run_cli, train
from metalearn.sweeps import optimized_value


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    record = run_cli(train, cfg)
    # hyperparameter sweepers (hparams_search=...) optimise the value main returns
    return run_cli(optimized_value, cfg, record)


if __name__ == "__main__":
    main()
