"""Multirun sweeps: a summary table of a sweep's jobs, and the value that hyperparameter
searches optimise.

`SweepSummary` (registered in configs/hydra/default.yaml) writes `summary.csv` and `summary.md`
into the sweep directory: one row per job with its overrides, its test score with the 95% CI, its
best meta-val score and its directory. A job without results.json is listed as failed.
"""

from __future__ import annotations

import atexit
import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from metalearn.errors import UserError

# The results.json scores a summary reports, for classification and for regression runs.
SCORE_KEYS = ("test_acc", "test_acc_ci95", "best_val_acc",
              "test_mse", "test_mse_ci95", "best_val_mse")
FAILED = "failed (no results.json)"


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory of a sweep (a folder with .hydra/overrides.yaml), by job number."""
    rows = []
    for overrides_file in sweep_dir.glob("**/.hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        results_file = job_dir / "results.json"
        row = {
            "job": OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.num,
            "overrides": " ".join(OmegaConf.load(overrides_file)),
            "status": "ok" if results_file.is_file() else FAILED,
        }
        if results_file.is_file():
            record = json.loads(results_file.read_text())
            row.update((key, record[key]) for key in SCORE_KEYS if key in record)
        row["dir"] = str(job_dir.relative_to(sweep_dir))
        rows.append(row)
    return sorted(rows, key=lambda row: row["job"])


def markdown_cell(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text.replace("|", r"\|")


def write_summary(sweep_dir: Path) -> None:
    """Writes summary.csv (full precision) and summary.md (a Markdown table) into sweep_dir."""
    rows = job_rows(sweep_dir)
    scores = [key for key in SCORE_KEYS if any(key in row for row in rows)]
    columns = ["job", "overrides", "status", *scores, "dir"]
    with open(sweep_dir / "summary.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(markdown_cell(row.get(key, "")) for key in columns) + " |"
              for row in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")


class SweepSummary(Callback):
    """Writes the summary of a multirun when it ends. Hydra skips on_multirun_end when a job
    fails, so the summary is also written at exit: the failed job then gets its row."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(self.write)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self.write)
        self.write()

    def write(self) -> None:
        if self.sweep_dir.is_dir():  # no job started when composing failed
            write_summary(self.sweep_dir)


def optimized_value(cfg: DictConfig, record: dict[str, Any]) -> float | None:
    """The run's score that a hyperparameter search optimises: record[cfg.optimized_metric]
    (None when optimized_metric is not set)."""
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if key not in record:
        scores = [name for name, value in record.items() if isinstance(value, float)]
        raise UserError(f"optimized_metric={key!r} is not in this run's results; "
                        f"use one of: {', '.join(scores)}")
    return record[key]
