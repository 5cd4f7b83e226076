"""compare.py's job: several checkpoints tested on the same test episodes, each with its score,
and every pair with its paired difference, the 95% interval of the per-episode differences, the
paired t-test and the Wilcoxon signed-rank test, and whether the difference stays significant
after Holm's correction over all pairs (metalearn/evaluation/statistics.py). Each checkpoint's
entry carries the warnings about its score (few test classes, collapsed predictions), logged as
they are found.

The checkpoints load as eval.py's do (metalearn/run/stored_runs.py) (their stored configs with the user's overrides); the test
episodes are the compare config's (episode.test_episodes, episode.eval_seed), the same for all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from metalearn.errors import UserError
from metalearn.evaluation.results import (
    comparison_record,
    describe_comparison,
    score_warnings,
    scores_record,
    write_comparison,
)
from metalearn.evaluation.rl_results import (
    describe_rl_comparison,
    rl_checkpoint_entry,
    rl_task_record,
    write_rl_comparison,
)
from metalearn.evaluation.statistics import pairwise_comparisons
from metalearn.paths import component_name
from metalearn.run.config_check import validate
from metalearn.run.engine import meta_test_scores, rl_test_returns, test_trainer
from metalearn.run.run_dir import write_launch_record
from metalearn.run.stored_runs import StoredRun, stored_run, tested_model

log = logging.getLogger(__name__)


def checkpoint_paths(cfg: DictConfig) -> list[str]:
    """ckpt_paths: a list of two or more checkpoint paths."""
    if OmegaConf.is_missing(cfg, "ckpt_paths") or cfg.get("ckpt_paths") is None:
        raise UserError("compare.py needs ckpt_paths=[A.ckpt,B.ckpt], two or more checkpoints "
                        "written by train.py or the Python API")
    paths = cfg.ckpt_paths
    if (not isinstance(paths, ListConfig) or len(paths) < 2
            or not all(isinstance(path, str) and path for path in paths)):
        shown = OmegaConf.to_container(paths) if isinstance(paths, ListConfig) else paths
        raise UserError(f"ckpt_paths={shown!r} must be a list of two or more checkpoint paths, e.g. "
                        "ckpt_paths=[a.ckpt,b.ckpt]")
    return list(paths)


def significance_level(cfg: DictConfig) -> float:
    alpha = cfg.compare.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"compare.alpha={alpha!r} must be a number between 0 and 1")
    return float(alpha)


def task_of(run: StoredRun) -> dict:
    """What makes the test episodes and what the model takes: tasks of checkpoints compared must
    agree in all of it."""
    cfg = run.cfg
    return {"dataset": component_name(cfg.dataset), "split": cfg.dataset.get("split"),
            "n_way": cfg.episode.n_way, "k_shot": cfg.episode.k_shot,
            "query_size": cfg.episode.query_size, "input shape": run.input_shape}


def check_same_tasks(runs: list[StoredRun]) -> None:
    """Refuses checkpoints whose tasks differ, naming each checkpoint's differing settings."""
    tasks = [task_of(run) for run in runs]
    # None: not known (a checkpoint of an earlier version stores no input shape)
    differing = [key for key in tasks[0]
                 if len({repr(task[key]) for task in tasks if task[key] is not None}) > 1]
    if differing:
        described = "; ".join(
            f"{run.path}: " + ", ".join(f"{key} {task[key]}" for key in differing)
            for run, task in zip(runs, tasks))
        raise UserError(f"ckpt_paths: these checkpoints test on different tasks ({described}); "
                        "compare checkpoints of one task shape, or set it for all "
                        "(episode.n_way=..., episode.k_shot=..., dataset=...)")


def checkpoint_entry(number: int, run: StoredRun, scores: dict) -> dict:
    """comparison.json's entry of one checkpoint: its id, algorithm, path, scores and the
    warnings about them (each logged)."""
    algorithm = component_name(run.cfg.algorithm)
    warnings = score_warnings(scores)
    for warning in warnings:
        log.warning("checkpoint %d (%s): %s", number, algorithm, warning)
    return {"id": number, "algorithm": algorithm, "checkpoint": str(Path(run.path).resolve()),
            **scores, "warnings": warnings}


def compare(cfg: DictConfig, overrides: Iterable[str] = ()) -> dict:
    """Tests every checkpoint of cfg.ckpt_paths on the same test episodes; writes and returns
    the comparison (comparison.json, comparison.md in cfg.paths.output_dir)."""
    paths, alpha = checkpoint_paths(cfg), significance_level(cfg)
    runs = [stored_run(path, cfg, overrides, "ckpt_paths", "compare.py") for path in paths]
    for run in runs:  # one set of test episodes for all, whatever each was trained with
        run.cfg.episode.eval_seed = cfg.episode.eval_seed
        if "test_episodes" in run.cfg.episode:  # meta-RL's held-out tasks: episode.test_tasks
            run.cfg.episode.test_episodes = cfg.episode.test_episodes
    if runs[0].cfg.get("env") is not None:
        return compare_rl(cfg, runs, alpha)
    check_same_tasks(runs)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_launch_record(output_dir, cfg)  # after the checks: a refused command records nothing

    tasks, checkpoints, scores = None, [], []
    for number, run in enumerate(runs, 1):
        # the first checkpoint's task family serves all (the same classes and images), unless a
        # text model was trained with another tokenizer: the same texts, encoded its way
        validate(run.cfg)
        if tasks is not None and tasks.input_record().get("tokenizer") != run.tokenizer_state:
            tasks = None
        datamodule, model = tested_model(run, run.cfg, tasks=tasks)
        tasks = datamodule.tasks
        results, per_episode = meta_test_scores(test_trainer(run.cfg, output_dir), model,
                                                datamodule)
        checkpoints.append(checkpoint_entry(number, run, scores_record(results)))
        scores.append(per_episode)
    pairs = [dict(pair, a=pair["a"] + 1, b=pair["b"] + 1)  # by id
             for pair in pairwise_comparisons(scores, alpha)]
    comparison = comparison_record(runs[0].cfg, checkpoints, pairs, alpha)
    for line in describe_comparison(comparison):
        print(line)
    print(f"Comparison: {write_comparison(output_dir, comparison)}")
    return comparison


def rl_task_of(run: StoredRun) -> dict:
    """What makes the held-out tasks and their rollouts: checkpoints compared must agree."""
    return {key: value for key, value in rl_task_record(run.cfg).items() if key != "oracle"}


def compare_rl(cfg: DictConfig, runs: list[StoredRun], alpha: float) -> dict:
    """Meta-RL checkpoints on the same held-out tasks with the same rollout seeds (the first
    checkpoint's env and episode.test_tasks, compare.py's episode.eval_seed, serve all): each one's return by
    adaptation steps, and each pair's paired difference of the return after adaptation, task
    by task. An oracle (env.oracle=true) is compared with the others on the same tasks."""
    first = rl_task_of(runs[0])
    for run in runs[1:]:
        differing = {key: value for key, value in rl_task_of(run).items()
                     if value != first[key] and key not in ("test_tasks", "eval_seed")}
        if differing or run.cfg.get("env") is None:
            raise UserError(f"ckpt_paths: {run.path} was trained on other tasks than "
                            f"{runs[0].path} ({differing or 'not on environments'}); compare "
                            "meta-RL checkpoints of one env, horizon and rollouts per task")
        run.cfg.episode.test_tasks = runs[0].cfg.episode.test_tasks
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_launch_record(output_dir, cfg)
    checkpoints, scores = [], []
    for number, run in enumerate(runs, 1):
        validate(run.cfg)
        datamodule, model = tested_model(run, run.cfg)
        per_task = rl_test_returns(test_trainer(run.cfg, output_dir), model, datamodule)
        checkpoints.append(rl_checkpoint_entry(
            number, component_name(run.cfg.algorithm), str(Path(run.path).resolve()), per_task,
            model.test_inner_steps))
        scores.append(per_task[:, model.test_inner_steps])
    pairs = [dict(pair, a=pair["a"] + 1, b=pair["b"] + 1)
             for pair in pairwise_comparisons(scores, alpha)]
    comparison = {"task": rl_task_record(runs[0].cfg), "alpha": alpha,
                  "correction": "Holm over all pairs, applied to the p-values of each test",
                  "checkpoints": checkpoints, "pairs": pairs}
    for line in describe_rl_comparison(comparison):
        print(line)
    print(f"Comparison: {write_rl_comparison(output_dir, comparison)}")
    return comparison
