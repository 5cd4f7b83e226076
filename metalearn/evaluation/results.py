"""The results record that train.py and eval.py write (results.json, results.md) and print, and
the comparison record of compare.py (comparison.json, comparison.md).

results.json and comparison.json keep every number at full precision, and are always valid JSON:
a non-finite number (a diverged score) is written as null, as is an interval that does not exist
(one episode). results.md and comparison.md are the tables for people and papers: a title naming
the algorithm, the dataset and the task shape, percentages rounded to two decimals with their
intervals, and the record's warnings first.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from metalearn.files import write_text
from metalearn.paths import component_name

log = logging.getLogger(__name__)

#: Fewer distinct test classes (or groups) than this, and the record warns that its interval
#: over episodes says nothing about which classes were drawn. The classes are the units of the
#: sampling that matters there, and below about 30 units a mean's spread is itself poorly known
#: (Student's t quantile at 29 degrees of freedom is 2.05, against the normal 1.96), while the
#: class-to-class spread, which the episode interval ignores, shrinks only as 1 / sqrt(classes). It catches mini-ImageNet, CIFAR-FS and FC100
#: (20 test classes) and spares CUB (50), tiered-ImageNet (160) and Omniglot (hundreds).
FEW_CLASSES = 30


def task_record(cfg: DictConfig, score: str) -> dict:
    """What the test episodes were: the dataset, its split where it has several, the task shape
    (n_way only for classification, `score` "acc"), how many episodes and their seed."""
    record = {"dataset": component_name(cfg.dataset)}
    if "split" in cfg.dataset:
        record["split"] = cfg.dataset.split
    if score == "acc":
        record["n_way"] = cfg.episode.n_way
    record |= {"k_shot": cfg.episode.k_shot, "query_size": cfg.episode.query_size,
               "test_episodes": cfg.episode.test_episodes, "eval_seed": cfg.episode.eval_seed}
    return record


def results_record(cfg: DictConfig, scores: Mapping[str, Any]) -> dict:
    """The results.json schema shared by train.py and eval.py: the algorithm, the test episodes
    (`task_record`), the scores (`scores_record`) and the warnings about them
    (`score_warnings`), each of which is also logged."""
    scored = scores_record(scores)
    record = {"algorithm": component_name(cfg.algorithm),
              **task_record(cfg, score_name(scored)), **scored,
              "warnings": score_warnings(scored)}
    for warning in record["warnings"]:
        log.warning("%s", warning)
    return record


def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, infinity) replaced by None, through dicts and
    lists: JSON has no such numbers (Python would write NaN, which JSON readers refuse)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def json_text(record: Mapping) -> str:
    """The record as JSON, non-finite numbers as null (`finite`); refuses any that remain."""
    return json.dumps(finite(record), indent=2, allow_nan=False) + "\n"


def scores_record(scores: Mapping[str, Any]) -> dict[str, Any]:
    """A module's test results under results.json's names (test/acc -> test_acc), non-finite
    numbers as None."""
    return {key.replace("test/", "test_"): finite(value) for key, value in scores.items()}


def score_name(record: Mapping) -> str:
    """The record's score: "acc" (classification), "return" (meta-RL) or "mse" (regression)."""
    return "acc" if "test_acc" in record else "return" if "test_return" in record else "mse"


def unit_name(score: str) -> str:
    """What the test episodes draw: classes (classification) or groups (regression)."""
    return "class" if score == "acc" else "group"


def plural(noun: str) -> str:
    """'episodes', 'classes', 'groups'."""
    return noun + ("es" if noun.endswith("s") else "s")


def count_text(count: int, noun: str) -> str:
    """'1 episode', '8 episodes', '1 class', '20 classes'."""
    return f"{count} {noun if count == 1 else plural(noun)}"


def number_text(score: str, value: float) -> str:
    """An accuracy as a percentage with two decimals ('93.10%'), an MSE to four significant
    digits ('0.1234', '4.502', '2.194e+18')."""
    return f"{100 * value:.2f}%" if score == "acc" else f"{value:#.4g}"


def score_text(name: str, value: float, ci95: float | None, plus_minus: str = "+-") -> str:
    """'accuracy 93.10% +- 0.50%' (name "acc"), 'MSE 0.1234 +- 0.0100' (name "mse"), or
    'accuracy 20.00%, no interval (1 episode)' where there is none."""
    label = "accuracy" if name == "acc" else "MSE"
    return f"{label} {interval_text(name, value, ci95, plus_minus)}"


def interval_text(name: str, value: float, ci95: float | None, plus_minus: str = "+-") -> str:
    """'93.10% +- 0.50%', or '20.00%, no interval (1 episode)'."""
    if ci95 is None:
        return f"{number_text(name, value)}, no interval (1 episode)"
    return f"{number_text(name, value)} {plus_minus} {number_text(name, ci95)}"


def interval_basis(record: Mapping, plus_minus: str = "+-") -> str:
    """What the interval stands on: '95% CI, 600 episodes of 20 test classes; +- 2.10%
    resampling the classes too' (without classes where the episodes do not know them)."""
    name = score_name(record)
    basis = count_text(record["test_episodes"], "episode")
    if "test_classes" in record:
        unit = unit_name(name)
        basis += f" of {count_text(record['test_classes'], f'test {unit}')}"
        by_class = record.get(f"test_{name}_ci95_classes")
        if by_class is not None:
            basis += (f"; {plus_minus} {number_text(name, by_class)} resampling the "
                      f"{plural(unit)} too")
    return basis if record[f"test_{name}_ci95"] is None else f"95% CI, {basis}"


def score_warnings(scores: Mapping[str, Any]) -> list[str]:
    """One line for each way the scores (under results.json's names) could mislead: few distinct
    test classes or groups behind the interval (fewer than FEW_CLASSES), and most test episodes
    collapsed to one answer."""
    name, warnings = score_name(scores), []
    episodes, classes = scores["test_episodes"], scores.get("test_classes")
    if classes is not None and classes < FEW_CLASSES:
        warnings.append(few_classes_warning(scores))
    collapsed = scores.get("test_collapsed_episodes", 0)
    if collapsed > episodes / 2:
        what = ("predicted one class for every query" if name == "acc" else
                "made predictions that hardly vary across their queries")
        warnings.append(f"{collapsed} of {count_text(episodes, 'test episode')} {what}: the "
                        "model may have collapsed to a constant output")
    return warnings


def few_classes_warning(scores: Mapping[str, Any]) -> str:
    """'the 600 test episodes draw on only 20 distinct test classes: test_acc_ci95 (+- 0.45%)
    counts episodes only, ...; test_acc_ci95_classes (+- 2.71%) resamples the classes too'."""
    name = score_name(scores)
    episodes, classes, unit = scores["test_episodes"], scores["test_classes"], unit_name(name)
    episode_ci, by_class = scores[f"test_{name}_ci95"], scores.get(f"test_{name}_ci95_classes")
    counted = "none" if episode_ci is None else f"+- {number_text(name, episode_ci)}"
    usual = ", as the usual interval of mini-ImageNet's 20 test classes does" * (name == "acc")
    if by_class is None:  # one class or one episode
        resampled = f"no interval resamples {f'a single {unit}' if classes < 2 else 'one episode'}"
    else:
        resampled = (f"test_{name}_ci95_classes (+- {number_text(name, by_class)}) resamples the "
                     f"{plural(unit)} too")
    return (f"the {count_text(episodes, 'test episode')} draw{'s' * (episodes == 1)} on only "
            f"{count_text(classes, f'distinct test {unit}')}: test_{name}_ci95 ({counted}) counts "
            f"episodes only{usual}; {resampled}")


def describe(record: Mapping) -> str:
    """One line: the algorithm, the task shape and the meta-test score with its interval and
    what it stands on."""
    name = score_name(record)
    score = score_text(name, record[f"test_{name}"], record[f"test_{name}_ci95"])
    return (f"{record['algorithm']} on {record['dataset']} {shape_text(record)}: meta-test "
            f"{score} ({interval_basis(record)})")


def shape_text(record: Mapping, shot: bool = True) -> str:
    """'5-way 1-shot' (classification) or '10-shot' (regression); without the shot (several
    shots in one figure): '5-way', or ''."""
    parts = ([f"{record['n_way']}-way"] if "n_way" in record else []) + (
        [f"{record['k_shot']}-shot"] if shot else [])
    return " ".join(parts)


def task_text(record: Mapping, shot: bool = True) -> str:
    """'omniglot (lake split), 5-way 1-shot, 15 queries per class', or 'sinusoid, 10-shot, 10
    query points'; without the shot where `shot` is false."""
    dataset = record["dataset"] + (f" ({record['split']} split)" if "split" in record else "")
    queries = (f"{record['query_size']} queries per class" if "n_way" in record
               else f"{record['query_size']} query points")
    return ", ".join(part for part in (dataset, shape_text(record, shot), queries) if part)


def title(record: Mapping) -> str:
    """A results table's or a figure's title: 'maml on omniglot (lake split), 5-way 1-shot, 15
    queries per class'."""
    return f"{record['algorithm']} on {task_text(record)}"


def describe_transfer(record: Mapping) -> str:
    """One line: the meta-trained and the randomly initialised model's scores and the gain."""
    name, transfer = score_name(record), record["transfer_gain"]
    trained = score_text(name, record[f"test_{name}"], record[f"test_{name}_ci95"])
    untrained = score_text(name, transfer[f"random_init_test_{name}"],
                           transfer[f"random_init_test_{name}_ci95"])
    return (f"{record['k_shot']}-shot transfer gain: meta-trained {trained} against random init "
            f"{untrained}; gain {gain_text(name, transfer['gain'], transfer['gain_ci95'])} "
            f"(paired 95% CI, paired t-test p {p_text(transfer['p_ttest'])})")


def gain_text(name: str, value: float, ci95: float | None, plus_minus: str = "+-") -> str:
    """A signed difference with its interval: '+53.00% +- 1.55%'."""
    sign = "+" if value >= 0 else "-"
    return sign + interval_text(name, abs(value), ci95, plus_minus)


def p_text(p_value: float | None) -> str:
    """What follows 'p' in a sentence: '= 0.031', '< 1e-300' or 'n/a (1 episode)'."""
    text = p_value_text(p_value, digits=2)
    return f"= {text}" if p_value else text


def p_value_text(p_value: float | None, digits: int = 3) -> str:
    """'0.0312', '< 1e-300' where the p-value underflows to 0, or 'n/a (1 episode)'."""
    if p_value is None:
        return "n/a (1 episode)"
    return f"{p_value:.{digits}g}" if p_value > 0 else "< 1e-300"


def markdown_table(columns: Sequence[str], rows: Iterable[Mapping],
                   text: Callable[[Any], str] = str) -> list[str]:
    """The lines of a Markdown table of `rows`: each cell text(value), empty where a row has no
    value; by default values as results.json holds them."""
    def cell(row: Mapping, key: str) -> str:
        return (text(row[key]) if key in row else "").replace("|", r"\|")

    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(cell(row, key) for key in columns) + " |" for row in rows])


#: keys the title of results.md names (`title`), not repeated in its table
TITLE_KEYS = ("algorithm", "dataset", "split", "n_way", "k_shot", "query_size")
PLUS_MINUS = "\u00b1"  # results.md writes intervals as a paper does: 93.10% ± 0.50%


def value_text(key: str, value: Any) -> str:
    """A results.md cell: an accuracy (a key naming acc) as a percentage, an interval's
    half-width after ±, another float to 4 significant digits, None as a dash."""
    if value is None:
        return "\u2014"
    if not isinstance(value, float):
        return str(value)
    number = f"{100 * value:.2f}%" if "acc" in key else f"{value:.4g}"
    return f"{PLUS_MINUS} {number}" if "_ci95" in key else number


def value_rows(values: Mapping, first: Sequence[str] = ()) -> list[dict[str, str]]:
    """The rows of a two-column table of a record's plain values, the keys `first` first, each
    score with its interval in one cell ('test_acc': '93.10% ± 0.50%'), leaving out what the
    title names."""
    rows = []
    for key in [*(key for key in first if key in values),
                *(key for key in values if key not in first)]:
        value = values[key]
        if (key in TITLE_KEYS or isinstance(value, (list, dict))
                or key.endswith("_ci95") and key[:-len("_ci95")] in values):
            continue
        if f"{key}_ci95" in values and value is not None:  # None: a score that diverged
            kind = "acc" if "acc" in key else "mse"
            text = interval_text(kind, value, values[f"{key}_ci95"], PLUS_MINUS)
        else:
            text = value_text(key, value)
        rows.append({"result": key, "value": text})
    return rows


def scores_table(first_column: str, entries: Sequence[Mapping], name: str) -> list[str]:
    """A table of one score over entries (shots, numbers of inner steps): its mean with its
    interval, and the interval that resamples the classes where there is one."""
    columns = [first_column, f"test_{name}"]
    if any(f"test_{name}_ci95_classes" in entry for entry in entries):
        columns.append(f"test_{name}_ci95_classes")
    rows = [{first_column: str(entry[first_column]),
             f"test_{name}": interval_text(name, entry[f"test_{name}"],
                                           entry[f"test_{name}_ci95"], PLUS_MINUS),
             f"test_{name}_ci95_classes": value_text(f"{name}_ci95",
                                                     entry.get(f"test_{name}_ci95_classes"))}
            for entry in entries]
    return markdown_table(columns, rows)


def transfer_rows(name: str, transfer: Mapping) -> list[dict[str, str]]:
    """The transfer gain's rows: the random model's score, the gain, its tests and its seed."""
    return [
        {"result": f"random_init_test_{name}",
         "value": interval_text(name, transfer[f"random_init_test_{name}"],
                                transfer[f"random_init_test_{name}_ci95"], PLUS_MINUS)},
        {"result": "gain (paired 95% CI)",
         "value": gain_text(name, transfer["gain"], transfer["gain_ci95"], PLUS_MINUS)},
        {"result": "p (paired t-test)", "value": p_value_text(transfer["p_ttest"])},
        {"result": "p (Wilcoxon signed-rank)", "value": p_value_text(transfer["p_wilcoxon"])},
        {"result": "transfer_seed", "value": str(transfer["transfer_seed"])},
    ]


def baseline_rows(baselines: Mapping) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of the classical baselines' table: each baseline's scores with their
    intervals, then the model's paired MSE difference to it and the tests' p-values."""
    scores = [key for key in next(iter(baselines.values()))
              if key.startswith("test_") and not key.endswith("_ci95")]
    columns = ["baseline", *scores, "model - baseline MSE (paired 95% CI)", "p (t-test)",
               "p (Wilcoxon)"]
    rows = []
    for name, entry in baselines.items():
        paired = entry["model_minus_baseline_mse"]
        rows.append({"baseline": name,
                     **{key: interval_text("mse", entry[key], entry[f"{key}_ci95"], PLUS_MINUS)
                        for key in scores},
                     columns[-3]: gain_text("mse", paired["difference"],
                                            paired["difference_ci95"], PLUS_MINUS),
                     columns[-2]: p_value_text(paired["p_ttest"]),
                     columns[-1]: p_value_text(paired["p_wilcoxon"])})
    return columns, rows


def warning_lines(warnings: Sequence[str]) -> list[str]:
    """The warnings as a Markdown quote, one item each, then a blank line (none: no lines)."""
    if not warnings:
        return []
    return ["> **Warnings**", ">", *(f"> - {warning}" for warning in warnings), ""]


def results_table(record: Mapping) -> str:
    """results.md: a title naming the algorithm, the dataset and the task shape; the warnings;
    the record's values in a table (percentages with their 95% intervals); then the scores by
    shot, by number of inner steps and the transfer gain, each a table of its own."""
    name = score_name(record)
    lines = [f"# {title(record)}", "", *warning_lines(record.get("warnings", []))]
    lines += markdown_table(["result", "value"],
                            value_rows(record, [f"test_{name}", f"test_{name}_ci95_classes"]))
    lines += ["", f"Intervals: {interval_basis(record, PLUS_MINUS)}."]
    shots = record.get("by_shot", [record])
    if "by_shot" in record:
        lines += ["", "## By shot", ""] + scores_table("k_shot", shots, name)
    for shot in shots:
        if "by_steps" in shot:
            lines += ["", f"## Adaptation speed ({shot['k_shot']}-shot)", ""]
            lines += scores_table("inner_steps", shot["by_steps"], name)
        if shot.get("baselines"):
            lines += ["", f"## Classical baselines on the same episodes ({shot['k_shot']}-shot)",
                      ""]
            lines += markdown_table(*baseline_rows(shot["baselines"]))
            lines += ["", f"Strongest baseline: {shot['best_baseline']}; a negative difference "
                      "is a lower MSE for the model."]
        if "transfer_gain" in shot:
            lines += ["", f"## Transfer gain ({shot['k_shot']}-shot)", ""]
            lines += markdown_table(["result", "value"],
                                    transfer_rows(name, shot["transfer_gain"]))
    return "\n".join(lines) + "\n"


def write_results(output_dir: Path, record: Mapping) -> Path:
    """Writes results.json and results.md (the same record as a table) into output_dir; returns
    the path of results.json."""
    path = output_dir / "results.json"
    write_text(path, json_text(record))
    write_text(output_dir / "results.md", results_table(record))
    return path


def comparison_record(cfg: DictConfig, checkpoints: list[dict], pairs: list[dict],
                      alpha: float) -> dict:
    """comparison.json: the shared test episodes, each checkpoint's score (with its warnings),
    and each pair's paired difference and tests
    (metalearn.evaluation.statistics.pairwise_comparisons, `a` and `b` by id)."""
    return {"task": task_record(cfg, score_name(checkpoints[0])), "alpha": alpha,
            "correction": "Holm over all pairs, applied to the p-values of each test",
            "checkpoints": checkpoints, "pairs": pairs}


def describe_comparison(comparison: Mapping) -> list[str]:
    """Lines for the terminal: each checkpoint's score, then each pair's difference."""
    name = score_name(comparison["checkpoints"][0])
    lines = [f"{entry['id']}: {entry['algorithm']} ({entry['checkpoint']}): meta-test "
             f"{score_text(name, entry[f'test_{name}'], entry[f'test_{name}_ci95'])}"
             for entry in comparison["checkpoints"]]
    for pair in comparison["pairs"]:
        verdict = ("significant" if pair["significant_ttest"] and pair["significant_wilcoxon"]
                   else "significant by one test" if pair["significant_ttest"]
                   or pair["significant_wilcoxon"] else "not significant")
        lines.append(
            f"{pair['a']} - {pair['b']}: "
            f"{gain_text(name, pair['difference'], pair['difference_ci95'])} (paired 95% CI); "
            f"Holm-corrected p = {p_value_text(pair['p_ttest_holm'])} (t-test), "
            f"{p_value_text(pair['p_wilcoxon_holm'])} (Wilcoxon): {verdict} at "
            f"{comparison['alpha']}")
    return lines


def significant_digits(value: Any) -> str:
    if value is None:
        return "\u2014"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def comparison_table(comparison: Mapping) -> str:
    """comparison.md: the episodes, the checkpoints' scores and the pairwise differences."""
    name = score_name(comparison["checkpoints"][0])
    task, first, unit = comparison["task"], comparison["checkpoints"][0], unit_name(name)
    warnings = [f"{entry['id']} ({entry['algorithm']}): {warning}"
                for entry in comparison["checkpoints"] for warning in entry.get("warnings", [])]
    drawn = (f", drawn from {count_text(first['test_classes'], f'distinct test {unit}')},"
             if "test_classes" in first else "")
    lines = [f"# Comparison on the same test episodes: {task_text(task)}", "",
             *warning_lines(warnings),
             f"The same {task['test_episodes']} test episodes (eval_seed {task['eval_seed']})"
             f"{drawn} for every checkpoint; {PLUS_MINUS}: the 95% interval over the episodes "
             f"(1.96 standard errors); test_{name}_ci95_classes: the 95% interval that resamples "
             f"the {plural(unit)} too (a two-level bootstrap).", "",
             "## Checkpoints", ""]
    checkpoints = [{"id": str(entry["id"]), "algorithm": entry["algorithm"],
                    f"test_{name}": interval_text(name, entry[f"test_{name}"],
                                                  entry[f"test_{name}_ci95"], PLUS_MINUS),
                    f"test_{name}_ci95_classes": value_text(
                        f"{name}_ci95", entry.get(f"test_{name}_ci95_classes")),
                    "checkpoint": entry["checkpoint"]}
                   for entry in comparison["checkpoints"]]
    lines += markdown_table(["id", "algorithm", f"test_{name}", f"test_{name}_ci95_classes",
                             "checkpoint"], checkpoints)
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
    write_text(path, json_text(comparison))
    write_text(output_dir / "comparison.md", comparison_table(comparison))
    return path
