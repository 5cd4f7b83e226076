"""The results record that train.py and eval.py write (results.json, results.md) and print, and
the comparison record of compare.py (comparison.json, comparison.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from metalearn.files import write_text
from metalearn.paths import component_name


def results_record(cfg: DictConfig, scores: dict[str, float]) -> dict:
    """The results.json schema shared by train.py and eval.py."""
    record = {
        "algorithm": component_name(cfg.algorithm),
        "dataset": component_name(cfg.dataset),
        "n_way": cfg.episode.n_way,
        "k_shot": cfg.episode.k_shot,
        "query_size": cfg.episode.query_size,
        "test_episodes": cfg.episode.test_episodes,
        "eval_seed": cfg.episode.eval_seed,
    }
    if "split" in cfg.dataset:
        record["split"] = cfg.dataset.split
    record.update(scores_record(scores))
    return record


def scores_record(scores: Mapping[str, float]) -> dict[str, float]:
    """A module's test results under results.json's names: test/acc -> test_acc."""
    return {key.replace("test/", "test_"): value for key, value in scores.items()}


def score_text(name: str, value: float, ci95: float) -> str:
    """'accuracy 93.10% +- 0.50%' (name "acc") or 'MSE 0.1234 +- 0.0100' (name "mse")."""
    if name == "acc":
        return f"accuracy {100 * value:.2f}% +- {100 * ci95:.2f}%"
    return f"MSE {value:.4f} +- {ci95:.4f}"


def score_name(record: Mapping) -> str:
    """The record's score: "acc" (classification) or "mse" (regression)."""
    return "acc" if "test_acc" in record else "mse"


def describe(record: Mapping) -> str:
    """One line: the algorithm, the task shape and the meta-test score with its interval."""
    name = score_name(record)
    shape = (f"{record['n_way']}-way {record['k_shot']}-shot" if name == "acc"
             else f"{record['k_shot']}-shot")
    score = score_text(name, record[f"test_{name}"], record[f"test_{name}_ci95"])
    return (f"{record['algorithm']} on {record['dataset']} {shape}: meta-test {score} "
            f"(95% CI, {record['test_episodes']} episodes)")


def describe_transfer(record: Mapping) -> str:
    """One line: the meta-trained and the randomly initialised model's scores and the gain."""
    name, transfer = score_name(record), record["transfer_gain"]
    trained = score_text(name, record[f"test_{name}"], record[f"test_{name}_ci95"])
    untrained = score_text(name, transfer[f"random_init_test_{name}"],
                           transfer[f"random_init_test_{name}_ci95"])
    scale, unit = (100, "%") if name == "acc" else (1, "")
    return (f"{record['k_shot']}-shot transfer gain: meta-trained {trained} against random init "
            f"{untrained}; gain {scale * transfer['gain']:+.2f}{unit} +- "
            f"{scale * transfer['gain_ci95']:.2f}{unit} (paired 95% CI, paired t-test p "
            f"{p_text(transfer['p_ttest'])})")


def p_text(p_value: float) -> str:
    """'= 0.031', or '< 1e-300' where the p-value underflows to 0."""
    return f"= {p_value:.2g}" if p_value > 0 else "< 1e-300"


def markdown_table(columns: Sequence[str], rows: Iterable[Mapping],
                   text: Callable[[Any], str] = str) -> list[str]:
    """The lines of a Markdown table of `rows`: each cell text(value), empty where a row has no
    value; by default values as results.json holds them."""
    def cell(row: Mapping, key: str) -> str:
        return (text(row[key]) if key in row else "").replace("|", r"\|")

    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(cell(row, key) for key in columns) + " |" for row in rows])


def results_table(record: Mapping) -> str:
    """The results record as Markdown: its values in a table, then the scores by shot, by number
    of inner steps and the transfer gain, each a table of its own."""
    name = score_name(record)
    score_columns = [f"test_{name}", f"test_{name}_ci95"]
    scalars = [{"result": key, "value": value} for key, value in record.items()
               if not isinstance(value, (list, dict))]
    lines = markdown_table(["result", "value"], scalars)
    shots = record.get("by_shot", [record])
    if "by_shot" in record:
        lines += ["", "## By shot", ""] + markdown_table(["k_shot", *score_columns], shots)
    for shot in shots:
        if "by_steps" in shot:
            lines += ["", f"## Adaptation speed ({shot['k_shot']}-shot)", ""]
            lines += markdown_table(["inner_steps", *score_columns], shot["by_steps"])
        if "transfer_gain" in shot:
            transfer = shot["transfer_gain"]
            lines += ["", f"## Transfer gain ({shot['k_shot']}-shot)", ""]
            lines += markdown_table(["result", "value"],
                                    [{"result": key, "value": value}
                                     for key, value in transfer.items()])
    return "\n".join(lines) + "\n"


def write_results(output_dir: Path, record: Mapping) -> Path:
    """Writes results.json and results.md (the same record as a table) into output_dir; returns
    the path of results.json."""
    path = output_dir / "results.json"
    write_text(path, json.dumps(record, indent=2) + "\n")
    write_text(output_dir / "results.md", results_table(record))
    return path


def comparison_record(cfg: DictConfig, checkpoints: list[dict], pairs: list[dict],
                      alpha: float) -> dict:
    """comparison.json: the shared test episodes, each checkpoint's score, and each pair's paired
    difference and tests (metalearn.evaluation.statistics.pairwise_comparisons, `a` and `b` by id)."""
    task = {key: value for key, value in results_record(cfg, {}).items() if key != "algorithm"}
    return {"task": task, "alpha": alpha,
            "correction": "Holm over all pairs, applied to the p-values of each test",
            "checkpoints": checkpoints, "pairs": pairs}


def describe_comparison(comparison: Mapping) -> list[str]:
    """Lines for the terminal: each checkpoint's score, then each pair's difference."""
    name = score_name(comparison["checkpoints"][0])
    scale, unit = (100, "%") if name == "acc" else (1, "")
    lines = [f"{entry['id']}: {entry['algorithm']} ({entry['checkpoint']}): meta-test "
             f"{score_text(name, entry[f'test_{name}'], entry[f'test_{name}_ci95'])}"
             for entry in comparison["checkpoints"]]
    for pair in comparison["pairs"]:
        verdict = ("significant" if pair["significant_ttest"] and pair["significant_wilcoxon"]
                   else "significant by one test" if pair["significant_ttest"]
                   or pair["significant_wilcoxon"] else "not significant")
        lines.append(
            f"{pair['a']} - {pair['b']}: {scale * pair['difference']:+.2f}{unit} +- "
            f"{scale * pair['difference_ci95']:.2f}{unit} (paired 95% CI); Holm-corrected p = "
            f"{pair['p_ttest_holm']:.3g} (t-test), {pair['p_wilcoxon_holm']:.3g} (Wilcoxon): "
            f"{verdict} at {comparison['alpha']}")
    return lines


def significant_digits(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def comparison_table(comparison: Mapping) -> str:
    """comparison.md: the episodes, the checkpoints' scores and the pairwise differences."""
    name = score_name(comparison["checkpoints"][0])
    task = comparison["task"]
    dataset = task["dataset"] + (f" ({task['split']} split)" if "split" in task else "")
    shape = (f"{task['n_way']}-way {task['k_shot']}-shot, {task['query_size']} queries per class"
             if name == "acc" else f"{task['k_shot']}-shot, {task['query_size']} query points")
    lines = ["# Comparison on the same test episodes", "",
             f"{dataset}, {shape}: the same {task['test_episodes']} test episodes (eval_seed "
             f"{task['eval_seed']}) for every checkpoint.", "",
             "## Checkpoints", ""]
    lines += markdown_table(["id", "algorithm", f"test_{name}", f"test_{name}_ci95",
                             "checkpoint"], comparison["checkpoints"], significant_digits)
    lines += ["", "## Paired differences", "",
              f"difference: a's {name} minus b's on each episode, averaged; difference_ci95: the "
              "95% interval of the per-episode differences (1.96 standard errors); p-values of "
              "the paired t-test (scipy.stats.ttest_rel) and of the Wilcoxon signed-rank test "
              f"(scipy.stats.wilcoxon); _holm: Holm's correction over all "
              f"{len(comparison['pairs'])} pairs, applied to each test's p-values; significant: "
              f"Holm-corrected p <= {comparison['alpha']}.", ""]
    lines += markdown_table(["a", "b", "difference", "difference_ci95", "p_ttest", "p_ttest_holm",
                             "significant_ttest", "p_wilcoxon", "p_wilcoxon_holm",
                             "significant_wilcoxon"], comparison["pairs"], significant_digits)
    return "\n".join(lines) + "\n"


def write_comparison(output_dir: Path, comparison: Mapping) -> Path:
    """Writes comparison.json and comparison.md into output_dir; returns comparison.json."""
    path = output_dir / "comparison.json"
    write_text(path, json.dumps(comparison, indent=2) + "\n")
    write_text(output_dir / "comparison.md", comparison_table(comparison))
    return path
