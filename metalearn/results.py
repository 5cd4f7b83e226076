"""The results record that train.py and eval.py write (results.json, results.md) and print."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from metalearn.config_check import component_name
from metalearn.files import write_text


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
    for key, value in scores.items():
        record[key.replace("test/", "test_")] = value  # test/acc -> test_acc
    return record


def describe(record: Mapping) -> str:
    """One line: the algorithm, the task shape and the meta-test score with its interval."""
    if "test_acc" in record:
        shape = f"{record['n_way']}-way {record['k_shot']}-shot"
        score = f"accuracy {100 * record['test_acc']:.2f}% +- {100 * record['test_acc_ci95']:.2f}%"
    else:
        shape = f"{record['k_shot']}-shot"
        score = f"MSE {record['test_mse']:.4f} +- {record['test_mse_ci95']:.4f}"
    return (f"{record['algorithm']} on {record['dataset']} {shape}: meta-test {score} "
            f"(95% CI, {record['test_episodes']} episodes)")


def results_table(record: Mapping) -> str:
    """The results record as a Markdown table, values as results.json holds them."""
    cells = {key: str(value).replace("|", r"\|") for key, value in record.items()}
    lines = ["| result | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in cells.items()]
    return "\n".join(lines) + "\n"


def write_results(output_dir: Path, record: Mapping) -> Path:
    """Writes results.json and results.md (the same record as a table) into output_dir; returns
    the path of results.json."""
    path = output_dir / "results.json"
    write_text(path, json.dumps(record, indent=2) + "\n")
    write_text(output_dir / "results.md", results_table(record))
    return path
