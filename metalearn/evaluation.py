"""eval.py's job: test a checkpoint on the meta-test split, at one or several shots."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf

from metalearn.build import build, instantiate_trainer
from metalearn.checkpoints import CONFIG_KEY, RUN_STATE_KEY, load_checkpoint
from metalearn.compose import override_keys, upgrade_stored_config
from metalearn.config_check import component_name
from metalearn.errors import UserError, check_whole_number
from metalearn.results import describe, results_record, write_results

#: keys of eval.yaml that are not training settings, never copied into the checkpoint's config
EVAL_ONLY_KEYS = ("ckpt_path", "eval", "hydra")
#: groups that make the model's architecture: evaluation cannot change them ...
ARCHITECTURE_GROUPS = ("algorithm", "backbone")
#: ... except these, which act at test time only
TEST_TIME_KEYS = ("algorithm.test_inner_steps", "algorithm.transductive_bn")


def trained_input_shape(checkpoint: dict) -> tuple[int, ...] | None:
    """The input shape the checkpoint's model was built for (None from earlier versions)."""
    shape = (checkpoint.get(RUN_STATE_KEY) or {}).get("input_shape")
    return None if shape is None else tuple(shape)


def fit_input_shape(dataset: DictConfig, input_shape: tuple[int, ...] | None,
                    changed: list[str]) -> None:
    """Sets an image dataset's image_size and channels to the trained input shape (C, S, S),
    unless the command line sets them."""
    if input_shape is None or len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        return
    channels, size = input_shape[0], input_shape[1]
    for key, value in (("image_size", size), ("channels", channels)):
        if key in dataset and f"dataset.{key}" not in changed:
            dataset[key] = value


def test_time_views(cfg: DictConfig, run_cfg: DictConfig) -> int:
    """eval.tta: how many augmented views of each test episode to average over (1: none); they
    are made by the dataset's augmentation (dataset.augment)."""
    views = check_whole_number("eval.tta", cfg.eval.get("tta", 1))
    if views > 1 and not run_cfg.dataset.get("augment"):
        raise UserError(f"eval.tta={views} averages over views made by the dataset's "
                        "augmentation, and dataset.augment is null; set one, e.g. "
                        "+dataset/augment=natural")
    return views


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
    trained_on = component_name(run_cfg.dataset)
    for key in changed:
        if key.split(".")[0] in ARCHITECTURE_GROUPS and key not in TEST_TIME_KEYS:
            raise UserError(
                f"eval.py cannot change {key}: it is part of the model the checkpoint holds "
                f"(trained with {key}={OmegaConf.select(run_cfg, key, default=None)}); evaluation "
                f"can change episode.*, dataset.*, trainer.* and {', '.join(TEST_TIME_KEYS)}")
        OmegaConf.update(run_cfg, key, OmegaConf.select(resolved_eval, key), merge=False)
    # the shape of meta-training tasks plays no part in testing
    run_cfg.episode.train_n_way = run_cfg.episode.train_query_size = None
    input_shape = trained_input_shape(checkpoint)
    if "dataset" in changed:  # another dataset: its images at the size the model was trained on
        fit_input_shape(run_cfg.dataset, input_shape, changed)
    views = test_time_views(cfg, run_cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shots = shots or [run_cfg.episode.k_shot]

    by_shot = []
    for k_shot in shots:
        shot_cfg = run_cfg.copy()
        shot_cfg.episode.k_shot = k_shot
        datamodule, model = build(shot_cfg)
        if input_shape is not None and tuple(datamodule.tasks.input_shape) != input_shape:
            raise UserError(f"dataset={component_name(shot_cfg.dataset)} gives inputs of shape "
                            f"{tuple(datamodule.tasks.input_shape)}; the model was trained on "
                            f"{trained_on}'s {input_shape}")
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:
            raise UserError(f"the checkpoint's weights do not fit the model these settings build "
                            f"({str(error).splitlines()[1].strip()}); of the overrides, "
                            f"{', '.join(changed)} may change its shape (episode.n_way, for an "
                            "algorithm with one output per class)") from None
        if views > 1:
            model.test_views = (datamodule.tasks.augmented_view, views)
        trainer: L.Trainer = instantiate_trainer(shot_cfg.trainer, logger=False, callbacks=[],
                                                 default_root_dir=str(output_dir),
                                                 enable_progress_bar=False)
        trainer.test(model, datamodule=datamodule, verbose=False)
        record = results_record(shot_cfg, model.test_results)
        if component_name(shot_cfg.dataset) != trained_on:
            record["trained_on"] = trained_on  # cross-domain: trained on one, tested on another
        if views > 1:
            record["test_time_views"] = views
        print(describe(record))
        by_shot.append(record)

    result = dict(by_shot[0], checkpoint=str(Path(cfg.ckpt_path).resolve()))
    if len(by_shot) > 1:
        result["by_shot"] = by_shot
    print(f"Results: {write_results(output_dir, result)}")
    return result
