"""eval.py's job: test a checkpoint on the meta-test split, at one or several shots, after each of
several numbers of inner steps (adaptation speed), and against a randomly initialised model of the
same architecture adapted the same way (transfer gain). The checkpoint comes back through
metalearn/run/stored_runs.py, as compare.py's do, and is tested through the run engine's
`meta_test_scores` (metalearn/run/engine.py), which scores by the evaluation protocol."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from metalearn.data.task_family import TaskFamily
from metalearn.errors import UserError, check_whole_number
from metalearn.evaluation.plots import write_eval_plots
from metalearn.evaluation.protocol import Augmentation
from metalearn.evaluation.results import (
    describe,
    describe_transfer,
    results_record,
    score_text,
    scores_record,
    write_results,
)
from metalearn.evaluation.rl_results import (
    describe_rl,
    return_by_steps,
    rl_results_record,
    write_rl_results,
)
from metalearn.evaluation.statistics import paired_difference
from metalearn.paths import component_name
from metalearn.run.build import instantiate_dataset
from metalearn.run.classical_scores import add_baselines, baseline_lines, configured_baselines
from metalearn.run.config_check import check_episode_fits, validate
from metalearn.run.engine import meta_test_scores, rl_test_returns, test_trainer
from metalearn.run.run_dir import write_launch_record
from metalearn.run.stored_runs import StoredRun, stored_run, tested_model


def test_time_views(cfg: DictConfig, run_cfg: DictConfig) -> int:
    """eval.tta: how many augmented views of each test episode to average over (1: none); they
    are made by the dataset's augmentation (dataset.augment)."""
    views = check_whole_number("eval.tta", cfg.eval.get("tta", 1))
    if views > 1 and "augment" not in run_cfg.dataset:
        raise UserError(f"eval.tta={views} averages over augmented views of each episode, and "
                        f"dataset={component_name(run_cfg.dataset)} has no augmentation (texts, "
                        "feature tables and the sinusoid are not augmented); use eval.tta=1")
    if views > 1 and not run_cfg.dataset.get("augment"):
        raise no_augmentation(views)
    return views


def no_augmentation(views: int) -> UserError:
    return UserError(f"eval.tta={views} averages over views made by the dataset's augmentation, "
                     "and dataset.augment is null (or chosen null for these images); set one, "
                     "e.g. +dataset/augment=natural")


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
    if not get_class(run_cfg.algorithm._target_).adapts_by_steps:
        raise UserError(f"eval.inner_steps={steps} applies to algorithms that adapt by gradient "
                        f"steps; {component_name(run_cfg.algorithm)} adapts in one pass over the "
                        "support set")


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
    if views > 1 and getattr(datamodule.tasks, "augment", None) is None:  # augment=auto chose none
        raise no_augmentation(views)
    augmentation = Augmentation(datamodule.tasks.augmented_view, views) if views > 1 else None
    trainer = test_trainer(shot_cfg, output_dir)
    # each count adapts afresh from the meta-learned weights
    by_steps = {count: meta_test_scores(trainer, model, datamodule, count, augmentation)
                for count in steps}
    # the record's score is at the model's own number of steps, as without eval.inner_steps
    tested = by_steps.get(model.test_inner_steps) if steps else None
    results, episode_scores = tested or meta_test_scores(trainer, model, datamodule,
                                                         augmentation=augmentation)

    record = results_record(shot_cfg, results)
    add_baselines(record, configured_baselines(shot_cfg, datamodule.tasks), datamodule,
                  episode_scores)
    if component_name(shot_cfg.dataset) != run.trained_on:
        record["trained_on"] = run.trained_on  # cross-domain: trained on one, tested on another
    if views > 1:
        record["test_time_views"] = views
    print(describe(record))
    for line in baseline_lines(record):
        print(line)
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
        untrained_results, untrained_scores = meta_test_scores(trainer, untrained, datamodule,
                                                               augmentation=augmentation)
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
    if run.cfg.get("env") is not None:
        return evaluate_rl(cfg, run, shots, steps, transfer_seed)
    if steps:
        check_adapts_by_steps(run.cfg, steps)
    views = test_time_views(cfg, run.cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_launch_record(output_dir, cfg)  # after the checks: a refused command records nothing

    shot_cfgs = []
    for k_shot in shots or [run.cfg.episode.k_shot]:
        shot_cfgs.append(run.cfg.copy())
        shot_cfgs[-1].episode.k_shot = k_shot
    validate(shot_cfgs[0])
    tasks = instantiate_dataset(run.cfg, run.tokenizer)
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


def evaluate_rl(cfg: DictConfig, run: StoredRun, shots: list[int], steps: list[int],
                transfer_seed: int | None) -> dict:
    """eval.py on a meta-RL checkpoint: the return on the held-out tasks before adaptation and
    after each step up to the most of eval.inner_steps (or the model's test_inner_steps), and
    with eval.transfer_gain the gain over a randomly initialised policy adapted in the same way,
    paired over tasks; results.json, results.md and plots/return_by_steps.png."""
    if shots:
        raise UserError(f"eval.shots={shots} applies to few-shot tasks; a meta-RL policy adapts "
                        "from its own rollouts (algorithm.episodes_per_task per step)")
    validate(run.cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_launch_record(output_dir, cfg)
    datamodule, model = tested_model(run, run.cfg)
    trainer = test_trainer(run.cfg, output_dir)
    own_steps = model.test_inner_steps
    per_task = rl_test_returns(trainer, model, datamodule, max(steps, default=own_steps))
    shown = max(steps, default=own_steps)
    record = rl_results_record(run.cfg, per_task, min(own_steps, shown))
    if transfer_seed is not None:
        _, untrained = tested_model(run, run.cfg, transfer_seed, tasks=datamodule.tasks)
        untrained_returns = rl_test_returns(trainer, untrained, datamodule, shown)
        tested = min(own_steps, shown)
        paired = paired_difference(per_task[:, tested], untrained_returns[:, tested])
        record["transfer_gain"] = {
            "transfer_seed": transfer_seed,
            "random_init_return_by_steps": return_by_steps(untrained_returns),
            "gain": paired["difference"], "gain_ci95": paired["difference_ci95"],
            "p_ttest": paired["p_ttest"], "p_wilcoxon": paired["p_wilcoxon"]}
    record["checkpoint"] = str(Path(cfg.ckpt_path).resolve())
    print(describe_rl(record))
    print(f"Results: {write_rl_results(output_dir, record)}")
    return record
