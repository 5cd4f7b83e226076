"""eval.py's job: test a checkpoint on the meta-test split, at one or several shots."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning as L
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metalearn.build import build
from metalearn.checkpoints import CONFIG_KEY, load_checkpoint
from metalearn.results import describe, results_record, write_results

#: keys of eval.yaml that are not training settings, never copied into the checkpoint's config
EVAL_ONLY_KEYS = ("ckpt_path", "eval", "hydra")


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys (or groups) named by command-line overrides, such as 'episode.k_shot'."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [override.key_or_group for override in parsed]


def evaluate(cfg: DictConfig, overrides: Iterable[str] = ()) -> dict:
    """Tests a checkpoint on the meta-test split, at one or several shots.

    The model and data are rebuilt from the training config stored in the checkpoint; of the
    eval config, only the keys the user overrode (`overrides`) replace the stored ones.
    """
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run_cfg = OmegaConf.create(checkpoint[CONFIG_KEY])
    resolved_eval = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in override_keys(overrides):
        if key.split(".")[0] not in EVAL_ONLY_KEYS:
            OmegaConf.update(run_cfg, key, OmegaConf.select(resolved_eval, key), merge=False)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shots = list(cfg.eval.shots) if cfg.eval.shots else [run_cfg.episode.k_shot]

    by_shot = []
    for k_shot in shots:
        shot_cfg = run_cfg.copy()
        shot_cfg.episode.k_shot = k_shot
        datamodule, model = build(shot_cfg)
        model.load_state_dict(checkpoint["state_dict"])
        trainer: L.Trainer = instantiate(shot_cfg.trainer, logger=False, callbacks=[],
                                         default_root_dir=str(output_dir),
                                         enable_progress_bar=False)
        trainer.test(model, datamodule=datamodule, verbose=False)
        record = results_record(shot_cfg, model.test_results)
        print(describe(record))
        by_shot.append(record)

    result = dict(by_shot[0], checkpoint=str(Path(cfg.ckpt_path).resolve()))
    if len(by_shot) > 1:
        result["by_shot"] = by_shot
    print(f"Results: {write_results(output_dir, result)}")
    return result
