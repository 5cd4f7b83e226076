"""Meta-train, validate and test one algorithm: python train.py algorithm=protonet episode.k_shot=1"""

import hydra
from omegaconf import DictConfig

from metalearn.run import run_cli, train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run_cli(train, cfg)


if __name__ == "__main__":
    main()
