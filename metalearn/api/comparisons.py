"""Scoring learners on few-shot episodes: `evaluate_few_shot` (one learner's mean score and 95%
interval) and the comparisons, `compare_learners` (learners on the same episodes, paired tests)
and `compare_checkpoints` (what compare.py runs). Episodes are scored by the evaluation protocol
(metalearn/evaluation/protocol.py), as train.py's meta-test is."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metalearn.api.learner import MetaLearner, evaluating, quiet_lightning
from metalearn.api.sampler import TaskSampler
from metalearn.data.episodes import Task, TaskBatch
from metalearn.errors import UserError, check_whole_number
from metalearn.evaluation.protocol import score_episodes
from metalearn.evaluation.statistics import mean_and_ci95, pairwise_comparisons
from metalearn.run.compare import compare
from metalearn.run.compose import compose_config


def evaluate_few_shot(learner: MetaLearner,
                      tasks: TaskSampler | TaskBatch | Sequence[TaskBatch | Task],
                      n_way: int | None = None, k_shot: int | None = None,
                      n_episodes: int = 600, n_steps: int | None = None) -> tuple[float, float]:
    """Mean query accuracy over `n_episodes` episodes with its 95% confidence interval.

    From a TaskSampler: its fixed episodes, of its shape (the same for every learner given the
    same sampler settings). From tasks (a TaskBatch or a list): the first `n_episodes`. The
    tasks' shape is the shape: `n_way` and `k_shot` may be given to check it, and a different
    one is an error. `n_steps`: inner steps, as `MetaLearner.adapt` takes them (default: the
    learner's `test_inner_steps`; one-pass algorithms ignore it). Regression: the mean squared
    error.
    """
    return mean_and_ci95(episode_scores(learner, tasks, n_way, k_shot, n_episodes, n_steps))


def check_shape(given: dict[str, int | None], actual: dict[str, int], what: str) -> None:
    """Each setting given (not None) must be a whole number equal to the tasks' own."""
    for key, value in given.items():
        if value is not None and check_whole_number(key, value) != actual[key]:
            raise UserError(f"{key}={value}, but {what} {key}={actual[key]}: the tasks' shape is "
                            f"the shape evaluated; leave {key} out or give tasks of that shape")


def episode_scores(learner: MetaLearner,
                   tasks: TaskSampler | TaskBatch | Sequence[TaskBatch | Task],
                   n_way: int | None = None, k_shot: int | None = None,
                   n_episodes: int = 600, n_steps: int | None = None) -> Tensor:
    """Each episode's query accuracy (regression: mean squared error), in episode order, on the
    episodes `evaluate_few_shot` takes, adapted in `n_steps` inner steps."""
    check_whole_number("n_episodes", n_episodes)
    steps = learner.steps_to_adapt(n_steps)
    given = {"n_way": n_way, "k_shot": k_shot}
    if isinstance(tasks, TaskSampler):
        if tasks.tasks.task_type == "classification":
            check_shape(given, {"n_way": tasks.n_way, "k_shot": tasks.k_shot},
                        "the sampler draws")
        learner.check_tasks_fit(tasks.tasks, tasks.n_way)
        episodes: Iterable[TaskBatch] = tasks.fixed_episodes(n_episodes)
    else:
        batch = learner.task_batch(tasks, "tasks")
        if batch.batch_size < n_episodes:
            raise UserError(f"tasks hold {batch.batch_size} episodes, fewer than "
                            f"n_episodes={n_episodes}; pass a TaskSampler or fewer n_episodes")
        if learner.module.task_type == "classification":
            ways = len(batch.support_y[0].unique())
            shots, uneven = divmod(batch.support_y.shape[1], ways)
            if uneven:
                raise UserError(f"tasks have {batch.support_y.shape[1]} support examples of "
                                f"{ways} classes: not the same number of shots per class")
            check_shape(given, {"n_way": ways, "k_shot": shots}, "the tasks are")
            learner.check_tasks_fit(learner.tasks, ways)
        episodes = (batch.select(slice(n_episodes)),)
    module = learner.module
    with evaluating(module), torch.no_grad():
        scores = [score_episodes(module, learner.task_batch(episode, "tasks"), steps)
                  for episode in episodes]
    return torch.cat(scores).cpu()


def compare_learners(learners: Sequence[MetaLearner],
                     tasks: TaskSampler | TaskBatch | Sequence[TaskBatch | Task],
                     n_way: int | None = None, k_shot: int | None = None,
                     n_episodes: int = 600, alpha: float = 0.05,
                     n_steps: int | None = None) -> dict[str, Any]:
    """Several learners scored on the same episodes (as `evaluate_few_shot` takes them, each
    adapted in `n_steps` inner steps where it adapts by steps):
    "learners", each learner's score and 95% interval by id (1, 2, ... in the given order), and
    "pairs", each pair's paired difference, its interval, the paired t-test and Wilcoxon
    p-values and their Holm correction over all pairs at significance level `alpha`
    (metalearn.evaluation.statistics.pairwise_comparisons).
    """
    if len(learners) < 2:
        raise UserError(f"compare_learners needs two or more learners; got {len(learners)}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"alpha={alpha!r} must be a number between 0 and 1")
    scores = [episode_scores(learner, tasks, n_way, k_shot, n_episodes, n_steps)
              for learner in learners]
    rows = []
    for number, (learner, learner_scores) in enumerate(zip(learners, scores), 1):
        mean, ci95 = mean_and_ci95(learner_scores)
        rows.append({"id": number, "algorithm": learner.algorithm, "score": mean, "ci95": ci95})
    pairs = [dict(pair, a=pair["a"] + 1, b=pair["b"] + 1)
             for pair in pairwise_comparisons(scores, alpha)]
    return {"episodes": len(scores[0]), "alpha": alpha, "learners": rows, "pairs": pairs}


def compare_checkpoints(paths: Sequence[str | os.PathLike], overrides: Iterable[str] = (),
                        output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """`python compare.py ckpt_paths=[...] <overrides>`: every checkpoint on the same test
    episodes, with the paired differences and tests; writes comparison.json and comparison.md
    into output_dir (default: a new directory under outputs/compares/) and returns the
    comparison."""
    overrides = list(overrides)
    cfg = compose_config(overrides, output_dir or ".", config_name="compare")
    if output_dir is None:
        cfg.paths.output_dir = str(Path(cfg.paths.log_dir) / "compares"
                                   / time.strftime("%Y-%m-%d_%H-%M-%S"))
    cfg.ckpt_paths = ([str(path) for path in paths] if isinstance(paths, (list, tuple))
                      else paths)
    with quiet_lightning():
        return compare(cfg, overrides)
