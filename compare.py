"""Compare checkpoints on the same test episodes: python compare.py ckpt_paths=[a.ckpt,b.ckpt]"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from metalearn.cli import run_cli, start_hydra_app

CONFIG = "compare"


@hydra.main(version_base="1.3", config_path="configs", config_name=CONFIG)
def main(cfg: DictConfig) -> None:
    # imported here, once the command line is checked: it loads torch and Lightning
    from metalearn.run.compare import compare

    run_cli(compare, cfg, HydraConfig.get().overrides.task)


if __name__ == "__main__":
    start_hydra_app(CONFIG)
    main()
