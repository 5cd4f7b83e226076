"""eval.py's job: test a checkpoint on the meta-test split, at one or several shots."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf

from metalearn.build import build, instantiate_trainer
from metalearn.checkpoints import CONFIG_KEY, load_checkpoint
from metalearn.compose import override_keys, upgrade_stored_config
from metalearn.errors import UserError, check_whole_number
from metalearn.results import describe, results_record, write_results

#: keys of eval.yaml that are not training settings, never copied into the checkpoint's config
EVAL_ONLY_KEYS = ("ckpt_path", "eval", "hydra")
#: groups that make the model's architecture: evaluation cannot change them ...
ARCHITECTURE_GROUPS = ("algorithm", "backbone")
#: ... except these, which act at test time only
TEST_TIME_KEYS = ("algorithm.test_inner_steps", "algorithm.transductive_bn")


def eval_shots(cfg: DictConfig) -> list[int]:
    """eval.shots: a list of whole numbers >= 1, or null (the checkpoint's k_shot)."""
    shots = cfg.eval.get("shots")
    if shots is None:
        return []
    if not isinstance(shots, ListConfig) or not shots:
        raise UserError(f"eval.shots={shots!r} must be a list of shots such as [1,5,10]")
    return [check_whole_number("eval.shots", shot) for shot in shots]


def evaluate(cfg: DictConfig, overrides: Iterable[str] = ()) -> dict:
    """Tests a checkpoint on the meta-test split, at one or several shots.

    The model and data are rebuilt from the training config stored in the checkpoint; of the
    eval config, only the keys the user overrode (`overrides`) replace the stored ones.
    """
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError("eval.py needs ckpt_path=PATH, a checkpoint written by train.py or the "
                        "Python API")
    shots = eval_shots(cfg)
    checkpoint = load_checkpoint(cfg.ckpt_path)
    run_cfg = upgrade_stored_config(OmegaConf.create(checkpoint[CONFIG_KEY]))
    resolved_eval = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    changed = [key for key in override_keys(overrides) if key.split(".")[0] not in EVAL_ONLY_KEYS]
    for key in changed:
        if key.split(".")[0] in ARCHITECTURE_GROUPS and key not in TEST_TIME_KEYS:
            raise UserError(
                f"eval.py cannot change {key}: it is part of the model the checkpoint holds "
                f"(trained with {key}={OmegaConf.select(run_cfg, key, default=None)}); evaluation "
                f"can change episode.*, dataset.*, trainer.* and {', '.join(TEST_TIME_KEYS)}")
        OmegaConf.update(run_cfg, key, OmegaConf.select(resolved_eval, key), merge=False)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shots = shots or [run_cfg.episode.k_shot]

    by_shot = []
    for k_shot in shots:
        shot_cfg = run_cfg.copy()
        shot_cfg.episode.k_shot = k_shot
        datamodule, model = build(shot_cfg)
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:
            raise UserError(f"the checkpoint's weights do not fit the model these settings build "
                            f"({str(error).splitlines()[1].strip()}); of the overrides, "
                            f"{', '.join(changed)} may change its shape (episode.n_way, for an "
                            "algorithm with one output per class)") from None
        trainer: L.Trainer = instantiate_trainer(shot_cfg.trainer, logger=False, callbacks=[],
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
