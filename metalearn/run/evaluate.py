"""eval.py's job: test a checkpoint on the meta-test split, at one or several shots, after each of
several numbers of inner steps (adaptation speed), and against a randomly initialised model of the
same architecture adapted the same way (transfer gain). compare.py loads and tests its checkpoints
with the same functions (`stored_run`, `tested_model`, `meta_test_scores`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from metalearn.algorithms.base import EpisodicModule
from metalearn.algorithms.gradient import GradientModule
from metalearn.data.datamodule import EpisodicDataModule
from metalearn.data.task_family import TaskFamily
from metalearn.errors import UserError, check_whole_number
from metalearn.evaluation.plots import write_eval_plots
from metalearn.evaluation.results import (
    describe,
    describe_transfer,
    results_record,
    score_text,
    scores_record,
    write_results,
)
from metalearn.evaluation.statistics import paired_difference
from metalearn.run.build import build, instantiate_checked, instantiate_trainer, validate
from metalearn.run.checkpoints import CONFIG_KEY, RUN_STATE_KEY, load_checkpoint
from metalearn.run.compose import override_keys, upgrade_stored_config
from metalearn.run.config_check import check_episode_fits, component_name

#: keys of eval.yaml that are not training settings, never copied into the checkpoint's config
EVAL_ONLY_KEYS = ("ckpt_path", "ckpt_paths", "eval", "compare", "hydra")
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


def eval_inner_steps(cfg: DictConfig) -> list[int]:
    """eval.inner_steps: a list of whole numbers >= 0 (sorted, each once), or null (none)."""
    steps = cfg.eval.get("inner_steps")
    if steps is None:
        return []
    if not isinstance(steps, ListConfig) or not steps:
        raise UserError(f"eval.inner_steps={steps!r} must be a list of inner step counts such as "
                        "[0,1,2,3,5,10]")
    return sorted({check_whole_number("eval.inner_steps", step, minimum=0) for step in steps})


def eval_transfer_seed(cfg: DictConfig) -> int | None:
    """The seed of the randomly initialised model with eval.transfer_gain=true; else None."""
    transfer_gain = cfg.eval.get("transfer_gain", False)
    if not isinstance(transfer_gain, bool):
        raise UserError(f"eval.transfer_gain={transfer_gain!r} must be true or false")
    if not transfer_gain:
        return None
    return check_whole_number("eval.transfer_seed", cfg.eval.get("transfer_seed", 0), minimum=0)


def check_adapts_by_steps(run_cfg: DictConfig, steps: list[int]) -> None:
    if not issubclass(get_class(run_cfg.algorithm._target_), GradientModule):
        raise UserError(f"eval.inner_steps={steps} applies to algorithms that adapt by gradient "
                        f"steps; {component_name(run_cfg.algorithm)} adapts in one pass over the "
                        "support set")


@dataclass
class StoredRun:
    """A checkpoint and the config it is tested with: its training config, with the keys the user
    overrode (`changed`) replaced."""

    path: str
    checkpoint: dict
    cfg: DictConfig
    changed: list[str]

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return trained_input_shape(self.checkpoint)

    @property
    def trained_on(self) -> str:
        return component_name(OmegaConf.create(self.checkpoint[CONFIG_KEY]).dataset)


def stored_run(path: str, cfg: DictConfig, overrides: Iterable[str], setting: str = "ckpt_path",
               tool: str = "eval.py") -> StoredRun:
    """Loads the checkpoint at `path` (named by `setting` in errors) and applies the
    overrides of the eval or compare config `cfg` (of `tool`) to its training config.

    Of `cfg`, only the keys the user overrode replace the stored ones; the architecture's keys
    are refused, except those that act at test time only.
    """
    checkpoint = load_checkpoint(path, setting)
    run_cfg = upgrade_stored_config(OmegaConf.create(checkpoint[CONFIG_KEY]))
    resolved_eval = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    changed = [key for key in override_keys(overrides) if key.split(".")[0] not in EVAL_ONLY_KEYS]
    for key in changed:
        if key.split(".")[0] in ARCHITECTURE_GROUPS and key not in TEST_TIME_KEYS:
            raise UserError(
                f"{tool} cannot change {key}: it is part of the model the checkpoint holds "
                f"(trained with {key}={OmegaConf.select(run_cfg, key, default=None)}); evaluation "
                f"can change episode.*, dataset.*, trainer.* and {', '.join(TEST_TIME_KEYS)}")
        OmegaConf.update(run_cfg, key, OmegaConf.select(resolved_eval, key), merge=False)
    # the shape of meta-training tasks plays no part in testing
    run_cfg.episode.train_n_way = run_cfg.episode.train_query_size = None
    run = StoredRun(path, checkpoint, run_cfg, changed)
    if "dataset" in changed:  # another dataset: its images at the size the model was trained on
        fit_input_shape(run_cfg.dataset, run.input_shape, changed)
    return run


def tested_model(run: StoredRun, cfg: DictConfig, random_init_seed: int | None = None,
                 tasks: TaskFamily | None = None) -> tuple[EpisodicDataModule, EpisodicModule]:
    """The data module and model `cfg` builds, with the checkpoint's weights, or, given
    `random_init_seed`, initialised at random as training starts from (seeded with it).
    `tasks`: the task family when it is already loaded."""
    if random_init_seed is not None:
        L.seed_everything(random_init_seed, verbose=False)
    datamodule, model = build(cfg, tasks=tasks)
    if run.input_shape is not None and tuple(datamodule.tasks.input_shape) != run.input_shape:
        raise UserError(f"dataset={component_name(cfg.dataset)} gives inputs of shape "
                        f"{tuple(datamodule.tasks.input_shape)}; the model was trained on "
                        f"{run.trained_on}'s {run.input_shape}")
    if random_init_seed is not None:
        return datamodule, model
    try:
        model.load_state_dict(run.checkpoint["state_dict"])
    except RuntimeError as error:
        raise UserError(f"the checkpoint's weights do not fit the model these settings build "
                        f"({str(error).splitlines()[1].strip()}); of the overrides, "
                        f"{', '.join(run.changed)} may change its shape (episode.n_way, for an "
                        "algorithm with one output per class)") from None
    return datamodule, model


def eval_trainer(cfg: DictConfig, output_dir: Path) -> L.Trainer:
    return instantiate_trainer(cfg.trainer, logger=False, callbacks=[],
                               default_root_dir=str(output_dir), enable_progress_bar=False)


def meta_test_scores(trainer: L.Trainer, model: EpisodicModule,
                     datamodule: EpisodicDataModule) -> tuple[dict[str, float], Tensor]:
    """Tests the model on the data module's test episodes: its results (test/acc, ...) and each
    episode's score, in episode order."""
    trainer.test(model, datamodule=datamodule, verbose=False)
    return model.test_results, model.test_scores_per_episode


def transfer_record(name: str, trained: Tensor, untrained: Tensor,
                    untrained_results: dict[str, float], seed: int) -> dict:
    """The randomly initialised model's score and the gain of meta-training over it on the same
    episodes, positive when meta-training helps (accuracy: trained - random; MSE: random -
    trained), with its paired interval and tests."""
    better, worse = (trained, untrained) if name == "acc" else (untrained, trained)
    paired = paired_difference(better, worse)
    return {
        "transfer_seed": seed,
        f"random_init_test_{name}": untrained_results[f"test/{name}"],
        f"random_init_test_{name}_ci95": untrained_results[f"test/{name}_ci95"],
        "gain": paired["difference"], "gain_ci95": paired["difference_ci95"],
        "p_ttest": paired["p_ttest"], "p_wilcoxon": paired["p_wilcoxon"],
    }


def evaluate_shot(run: StoredRun, shot_cfg: DictConfig, tasks: TaskFamily, steps: list[int],
                  transfer_seed: int | None, views: int, output_dir: Path) -> dict:
    """The results record of one shot (shot_cfg, on `tasks`): the score at the model's
    test_inner_steps, and where asked the scores after each number of inner steps and the
    transfer gain, all on the same test episodes."""
    datamodule, model = tested_model(run, shot_cfg, tasks=tasks)
    if views > 1:
        model.test_views = (datamodule.tasks.augmented_view, views)
    trainer = eval_trainer(shot_cfg, output_dir)
    by_steps = {}
    if steps:
        default_steps = model.test_inner_steps
        for count in steps:  # each count adapts afresh from the meta-learned weights
            model.test_inner_steps = count
            by_steps[count] = meta_test_scores(trainer, model, datamodule)
        model.test_inner_steps = default_steps
    # the record's score is at the model's own test_inner_steps, as without eval.inner_steps
    tested = by_steps.get(getattr(model, "test_inner_steps", None))
    results, episode_scores = tested or meta_test_scores(trainer, model, datamodule)

    record = results_record(shot_cfg, results)
    if component_name(shot_cfg.dataset) != run.trained_on:
        record["trained_on"] = run.trained_on  # cross-domain: trained on one, tested on another
    if views > 1:
        record["test_time_views"] = views
    print(describe(record))
    name = model.score_name
    if steps:
        record["test_inner_steps"] = model.test_inner_steps
        record["by_steps"] = [{"inner_steps": count, **scores_record(scores)}
                              for count, (scores, _) in by_steps.items()]
        for entry in record["by_steps"]:
            count = entry["inner_steps"]
            score = score_text(name, entry[f"test_{name}"], entry[f"test_{name}_ci95"])
            print(f"  after {count} inner step{'' if count == 1 else 's'}: {score}")
    if transfer_seed is not None:
        _, untrained = tested_model(run, shot_cfg, transfer_seed, tasks=datamodule.tasks)
        untrained.test_views = model.test_views
        untrained_results, untrained_scores = meta_test_scores(trainer, untrained, datamodule)
        record["transfer_gain"] = transfer_record(name, episode_scores, untrained_scores,
                                                  untrained_results, transfer_seed)
        print(describe_transfer(record))
    return record


def evaluate(cfg: DictConfig, overrides: Iterable[str] = ()) -> dict:
    """Tests a checkpoint on the meta-test split, at one or several shots (eval.shots), after
    each of several numbers of inner steps (eval.inner_steps), and against a randomly initialised
    model (eval.transfer_gain); writes results.json, results.md and the plots.

    The model and data are rebuilt from the training config stored in the checkpoint; of the
    eval config, only the keys the user overrode (`overrides`) replace the stored ones.
    """
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError("eval.py needs ckpt_path=PATH, a checkpoint written by train.py or the "
                        "Python API")
    shots, steps, transfer_seed = eval_shots(cfg), eval_inner_steps(cfg), eval_transfer_seed(cfg)
    run = stored_run(cfg.ckpt_path, cfg, overrides)
    if steps:
        check_adapts_by_steps(run.cfg, steps)
    views = test_time_views(cfg, run.cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    shot_cfgs = []
    for k_shot in shots or [run.cfg.episode.k_shot]:
        shot_cfgs.append(run.cfg.copy())
        shot_cfgs[-1].episode.k_shot = k_shot
    validate(shot_cfgs[0])
    tasks = instantiate_checked(run.cfg.dataset)
    for shot_cfg in shot_cfgs:  # every shot fits the dataset before any is tested
        check_episode_fits(shot_cfg, tasks)
    by_shot = [evaluate_shot(run, shot_cfg, tasks, steps, transfer_seed, views, output_dir)
               for shot_cfg in shot_cfgs]
    result = dict(by_shot[0], checkpoint=str(Path(cfg.ckpt_path).resolve()))
    if len(by_shot) > 1:
        result["by_shot"] = by_shot
    print(f"Results: {write_results(output_dir, result)}")
    for plot in write_eval_plots(output_dir, result):
        print(f"Plot: {plot}")
    return result
