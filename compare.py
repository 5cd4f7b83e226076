"""Compare checkpoints on the same test episodes: python compare.py ckpt_paths=[a.ckpt,b.ckpt]"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from metalearn.cli import run_cli, start_hydra_app
from metalearn.run.compare import compare


@hydra.main(version_base="1.3", config_path="configs", config_name="compare")
def main(cfg: DictConfig) -> None:
    run_cli(compare, cfg, HydraConfig.get().overrides.task)


if __name__ == "__main__":
    start_hydra_app()
    main()
