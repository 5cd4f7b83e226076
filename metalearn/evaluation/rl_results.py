"""The results of meta-reinforcement learning: the average return on held-out tasks before
adaptation and after each policy-gradient step (MAML's figure), with 95% intervals over the tasks,
as results.json, results.md, a line for the terminal and plots/return_by_steps.png.

The unit of the interval is the task: each held-out task's return is the mean over its rollouts,
and the tasks are what the interval resamples (as episodes are for few-shot classification).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig
from torch import Tensor

from metalearn.evaluation.plots import plot_scores
from metalearn.evaluation.results import (
    PLUS_MINUS,
    count_text,
    finite,
    json_text,
    markdown_table,
    p_value_text,
    warning_lines,
)
from metalearn.evaluation.statistics import mean_and_ci95, paired_difference
from metalearn.files import write_text
from metalearn.paths import component_name

log = logging.getLogger(__name__)

#: fewer held-out tasks than this, and the record warns that its interval is poorly known (as
#: FEW_CLASSES does for test classes)
FEW_TASKS = 10


def return_text(value: float, ci95: float | None, plus_minus: str = "+-") -> str:
    """'-12.34 +- 1.05', or '-12.34, no interval (1 task)'."""
    if ci95 is None:
        return f"{value:.2f}, no interval (1 task)"
    return f"{value:.2f} {plus_minus} {ci95:.2f}"


def return_by_steps(per_task: Tensor) -> dict[str, dict[str, float | None]]:
    """{"0": {"mean": ..., "ci95": ...}, "1": ...}: each column of the [tasks, steps + 1] matrix
    of per-task returns averaged over the tasks, with its 95% interval."""
    record = {}
    for step in range(per_task.shape[1]):
        mean, ci95 = mean_and_ci95(per_task[:, step])
        record[str(step)] = {"mean": mean, "ci95": ci95}
    return record


def rl_task_record(cfg: DictConfig) -> dict:
    """What the held-out tasks were: the env, its horizon, the oracle setting, the number of
    tasks, the rollouts per task and the seed that fixes both."""
    return {"env": cfg.env.name, "oracle": bool(cfg.env.get("oracle", False)),
            "horizon": cfg.env.get("horizon"), "test_tasks": cfg.episode.test_tasks,
            "episodes_per_task": cfg.algorithm.episodes_per_task,
            "eval_seed": cfg.episode.eval_seed}


def rl_results_record(cfg: DictConfig, per_task: Tensor, test_steps: int) -> dict:
    """results.json of a meta-RL run: the algorithm, the held-out tasks (`rl_task_record`), the
    return by adaptation steps, the return after `test_steps` (the run's own score,
    test_return), the paired gain of adaptation over the unadapted policy, each task's returns
    and the warnings, each of which is also logged."""
    by_steps = return_by_steps(per_task)
    score = by_steps[str(test_steps)]
    record = {"algorithm": component_name(cfg.algorithm), **rl_task_record(cfg),
              "test_inner_steps": test_steps,
              "test_return": score["mean"], "test_return_ci95": score["ci95"],
              "return_by_steps": by_steps,
              "adaptation_gain": paired_difference(per_task[:, test_steps], per_task[:, 0]),
              "per_task_returns": per_task.tolist()}
    record["warnings"] = rl_warnings(record)
    for warning in record["warnings"]:
        log.warning("%s", warning)
    return finite(record)


def rl_warnings(record: Mapping) -> list[str]:
    """Where the numbers could mislead: few held-out tasks; adaptation that lowered the return
    (its paired interval below zero), which says the inner step size does not suit the policy."""
    warnings = []
    if record["test_tasks"] < FEW_TASKS:
        warnings.append(f"only {count_text(record['test_tasks'], 'held-out task')}: the "
                        "interval over tasks is itself poorly known; use episode.test_tasks >= "
                        f"{FEW_TASKS}")
    gain = record["adaptation_gain"]
    if gain["difference_ci95"] is not None and gain["difference"] + gain["difference_ci95"] < 0:
        warnings.append(f"adaptation lowered the return by {-gain['difference']:.2f} "
                        f"+- {gain['difference_ci95']:.2f} over "
                        f"{record['test_inner_steps']} steps: the inner step size "
                        "(algorithm.inner_lr) may not suit this policy")
    return warnings


def rl_title(record: Mapping) -> str:
    """'maml_rl on navigation2d (oracle), 40 held-out tasks, 20 rollouts each'."""
    oracle = " (oracle)" if record["oracle"] else ""
    return (f"{record['algorithm']} on {record['env']}{oracle}, "
            f"{count_text(record['test_tasks'], 'held-out task')}, "
            f"{count_text(record['episodes_per_task'], 'rollout')} each")


def describe_rl(record: Mapping) -> str:
    """One line: the return before adaptation and after the run's number of steps."""
    before = record["return_by_steps"]["0"]
    return (f"{rl_title(record)}: return {return_text(before['mean'], before['ci95'])} before "
            f"adaptation, {return_text(record['test_return'], record['test_return_ci95'])} "
            f"after {count_text(record['test_inner_steps'], 'step')} (95% CI over tasks)")


def rl_results_table(record: Mapping) -> str:
    """results.md: the title, the warnings, the return by adaptation steps, the gain."""
    rows = [{"adaptation steps": step, "average return": return_text(
        entry["mean"], entry["ci95"], PLUS_MINUS)}
        for step, entry in record["return_by_steps"].items()]
    gain = record["adaptation_gain"]
    lines = [f"# {rl_title(record)}", "", *warning_lines(record.get("warnings", [])),
             *markdown_table(["adaptation steps", "average return"], rows), "",
             f"Each held-out task's return is the mean over its {record['episodes_per_task']} "
             f"rollouts of horizon {record['horizon']}; {PLUS_MINUS}: the 95% interval over "
             f"the {record['test_tasks']} tasks (eval_seed {record['eval_seed']} fixes the tasks "
             "and the rollout seeds).", "",
             f"Gain of {record['test_inner_steps']} adaptation steps (paired over tasks): "
             f"{'+' if gain['difference'] >= 0 else '-'}"
             f"{return_text(abs(gain['difference']), gain['difference_ci95'], PLUS_MINUS)}, "
             f"p = {p_value_text(gain['p_ttest'])} (t-test), "
             f"{p_value_text(gain['p_wilcoxon'])} (Wilcoxon)."]
    return "\n".join(lines) + "\n"


def return_points(record: Mapping) -> list[tuple[float, float, float | None]]:
    """(steps, mean return, its 95% interval) for each number of adaptation steps."""
    return [(int(step), entry["mean"], entry["ci95"])
            for step, entry in record["return_by_steps"].items()]


def write_rl_results(output_dir: Path, record: Mapping) -> Path:
    """Writes results.json, results.md and plots/return_by_steps.png; returns results.json."""
    path = output_dir / "results.json"
    write_text(path, json_text(record))
    write_text(output_dir / "results.md", rl_results_table(record))
    plot_scores({record["algorithm"]: return_points(record)},
                output_dir / "plots" / "return_by_steps.png", "policy-gradient adaptation steps",
                "return", rl_title(record))
    return path


def rl_checkpoint_entry(number: int, algorithm: str, checkpoint: str, per_task: Tensor,
                        test_steps: int) -> dict:
    """compare.py's entry of one meta-RL checkpoint: its return after `test_steps` adaptation
    steps and by steps, on the shared held-out tasks."""
    by_steps = return_by_steps(per_task)
    return {"id": number, "algorithm": algorithm, "checkpoint": checkpoint,
            "test_inner_steps": test_steps, "test_return": by_steps[str(test_steps)]["mean"],
            "test_return_ci95": by_steps[str(test_steps)]["ci95"],
            "return_by_steps": by_steps}


def rl_comparison_table(comparison: Mapping) -> str:
    """comparison.md of meta-RL checkpoints: the tasks, each checkpoint's return by steps and
    the pairwise differences of the return after adaptation, task by task."""
    task = comparison["task"]
    steps = list(comparison["checkpoints"][0]["return_by_steps"])
    rows = [{"id": str(entry["id"]), "algorithm": entry["algorithm"],
             **{f"return after {step}": return_text(
                 entry["return_by_steps"][step]["mean"], entry["return_by_steps"][step]["ci95"],
                 PLUS_MINUS) for step in steps if step in entry["return_by_steps"]},
             "checkpoint": entry["checkpoint"]}
            for entry in comparison["checkpoints"]]
    pairs = [{key: (f"{value:.4g}" if isinstance(value, float) else str(value))
              for key, value in pair.items()} for pair in comparison["pairs"]]
    lines = [f"# Comparison on the same held-out tasks: {task['env']}"
             f"{' (oracle)' if task['oracle'] else ''}", "",
             f"The same {task['test_tasks']} held-out tasks and rollout seeds (eval_seed "
             f"{task['eval_seed']}) for every checkpoint, {task['episodes_per_task']} rollouts of "
             f"horizon {task['horizon']} per task and step; {PLUS_MINUS}: the 95% interval over "
             "the tasks.", "", "## Checkpoints", "",
             *markdown_table(["id", "algorithm", *(f"return after {s}" for s in steps),
                              "checkpoint"], rows),
             "", "## Paired differences", "",
             "difference: a's return after its test_inner_steps minus b's, task by task; "
             "p-values of the paired t-test and the Wilcoxon signed-rank test, with Holm's "
             "correction over all pairs.", "",
             *markdown_table(["a", "b", "difference", "difference_ci95", "p_ttest",
                              "p_ttest_holm", "significant_ttest", "p_wilcoxon",
                              "p_wilcoxon_holm", "significant_wilcoxon"], pairs)]
    return "\n".join(lines) + "\n"


def describe_rl_comparison(comparison: Mapping) -> list[str]:
    """Lines for the terminal: each checkpoint's return, then each pair's difference."""
    lines = [f"{entry['id']}: {entry['algorithm']} ({entry['checkpoint']}): return "
             f"{return_text(entry['test_return'], entry['test_return_ci95'])} after "
             f"{count_text(entry['test_inner_steps'], 'step')}"
             for entry in comparison["checkpoints"]]
    for pair in comparison["pairs"]:
        ci95 = pair["difference_ci95"]
        lines.append(f"{pair['a']} - {pair['b']}: {pair['difference']:+.2f}"
                     f"{'' if ci95 is None else f' +- {ci95:.2f}'} (paired 95% CI); Holm-"
                     f"corrected p = {p_value_text(pair['p_ttest_holm'])} (t-test), "
                     f"{p_value_text(pair['p_wilcoxon_holm'])} (Wilcoxon)")
    return lines


def write_rl_comparison(output_dir: Path, comparison: Mapping) -> Path:
    """Writes comparison.json and comparison.md; returns comparison.json."""
    path = output_dir / "comparison.json"
    write_text(path, json_text(comparison))
    write_text(output_dir / "comparison.md", rl_comparison_table(comparison))
    return path
