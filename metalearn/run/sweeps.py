"""Multirun sweeps: a summary table of a sweep's jobs, and the value that hyperparameter
searches optimise.

`SweepSummary` (registered in configs/hydra/default.yaml) writes `summary.csv` and `summary.md`
into the sweep directory: one row per job with its overrides, its test score with the 95% CI, its
best meta-val score and its directory. A job without results.json is listed as failed, with its
error when the job ended on a user's mistake (error.txt, from `record_job_error`): such a job does
not stop the sweep, and the sweep then ends with exit status 2.

A sweep over training seeds (`seed=1,2,3`) also gets one row per configuration (the overrides
without the seed) in summary.md and summary_seeds.csv: the number of seeds, the mean test score
over them, the 95% interval of that mean from the spread across seeds (t-distribution), and
beside it the mean within-run interval over test episodes, so that a reader sees which
uncertainty dominates. `aggregate_seeds` gives the same rows from a sweep directory or from
results records.
"""

from __future__ import annotations

import atexit
import csv
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from metalearn.errors import UserError
from metalearn.evaluation.results import markdown_table, score_name
from metalearn.evaluation.statistics import seed_interval
from metalearn.files import atomic_write, write_text
from metalearn.run.compose import hydra_choices, override_keys, unknown_choice
from metalearn.run.run_dir import ERROR_FILE

# The results.json scores a summary reports, for classification and for regression runs.
SCORE_KEYS = ("test_acc", "test_acc_ci95", "best_val_acc",
              "test_mse", "test_mse_ci95", "best_val_mse")
FAILED = "failed (no results.json)"


def job_started(job_dir: Path) -> float:
    """When the job began: Hydra writes .hydra/hydra.yaml as each job starts."""
    return (job_dir / ".hydra" / "hydra.yaml").stat().st_mtime


def written_by_job(job_dir: Path, name: str) -> bool:
    """Whether the job wrote this file itself (not an earlier sweep into the same directory)."""
    path = job_dir / name
    return path.is_file() and path.stat().st_mtime >= job_started(job_dir)


def job_status(job_dir: Path) -> str:
    if written_by_job(job_dir, "results.json"):
        return "ok"
    if written_by_job(job_dir, ERROR_FILE):
        return "failed: " + (job_dir / ERROR_FILE).read_text().strip()
    return FAILED


def job_rows(sweep_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """One row per job directory of a sweep (a folder with .hydra/overrides.yaml) that started
    at `since` or later, by job number."""
    rows = []
    for overrides_file in sweep_dir.glob("**/.hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        if job_started(job_dir) < since:  # a job of an earlier sweep into this directory
            continue
        overrides = list(OmegaConf.load(overrides_file))
        row = {
            "job": OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.num,
            "overrides": " ".join(overrides),
            "status": job_status(job_dir),
            "configuration": configuration(overrides),
        }
        if row["status"] == "ok":
            record = json.loads((job_dir / "results.json").read_text())
            row.update((key, record[key]) for key in SCORE_KEYS if key in record)
        row["dir"] = str(job_dir.relative_to(sweep_dir))
        rows.append(row)
    return sorted(rows, key=lambda row: row["job"])


def markdown_cell(value: Any) -> str:
    """A summary cell: floats to 4 decimals; None (the interval over one seed) as n/a."""
    return f"{value:.4f}" if isinstance(value, float) else "n/a" if value is None else str(value)


def configuration(overrides: list[str]) -> str:
    """A job's overrides without its seed: the configuration that seeds repeat."""
    return " ".join(override for override, key in zip(overrides, override_keys(overrides))
                    if key != "seed")


def seeded(rows: list[dict[str, Any]]) -> bool:
    """Whether a sweep's jobs differ in seed (a job's configuration leaves its seed out)."""
    return any(row["configuration"] != row["overrides"] for row in rows)


def distinguishing(configurations: list[str]) -> list[str]:
    """Each configuration without the overrides that every one of them shares (the command
    line's fixed settings), where there are several; a lone configuration keeps them all."""
    if len(configurations) < 2:
        return configurations
    shared = set.intersection(*(set(name.split()) for name in configurations))
    return [" ".join(part for part in name.split() if part not in shared)
            for name in configurations]


def seed_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration of job rows (with "configuration", "status" and the scores of
    results.json), in order of first appearance: how many seeds scored and how many failed, the
    mean test score over the seeds (test_acc, or test_mse), the 95% interval of that mean from the
    spread across seeds (t-distribution with seeds - 1 degrees of freedom; none for one seed), and
    the mean of the runs' own 95% intervals over test episodes."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["configuration"], []).append(row)
    aggregated = []
    for name, jobs in zip(distinguishing(list(groups)), groups.values()):
        done = [job for job in jobs if job["status"] == "ok"]
        row = {"configuration": name or "(seed only)", "seeds": len(done),
               "failed": len(jobs) - len(done)}
        if done:
            score = score_name(done[0])
            values = [job[f"test_{score}"] for job in done]
            row[f"test_{score}"] = sum(values) / len(values)
            row[f"test_{score}_seed_ci95"] = seed_interval(values)
            row[f"test_{score}_episode_ci95"] = sum(job[f"test_{score}_ci95"]
                                                    for job in done) / len(done)
        aggregated.append(row)
    return aggregated


SEED_COLUMNS = ("configuration", "seeds", "failed", "test_acc", "test_acc_seed_ci95",
                "test_acc_episode_ci95", "test_mse", "test_mse_seed_ci95", "test_mse_episode_ci95")


def aggregate_seeds(source: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[dict]:
    """The rows of `seed_rows`, from a multirun's sweep directory (configurations: the jobs'
    overrides without seed), or from results records (results.json of runs that differ only in
    seed, or that name their configuration under "configuration"; without it, records group by
    algorithm, dataset, split and task shape)."""
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_dir():
            raise UserError(f"{str(source)!r} is not a sweep directory")
        return seed_rows(job_rows(Path(source)))
    rows = []
    for record in source:
        task = " ".join(f"{key}={record[key]}" for key in
                        ("algorithm", "dataset", "split", "n_way", "k_shot", "query_size")
                        if key in record)
        rows.append({**record, "configuration": record.get("configuration", task),
                     "status": "ok"})
    return seed_rows(rows)


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_write(path) as partial, open(partial, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_summary(sweep_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """Writes summary.csv (full precision) and summary.md (a Markdown table) into sweep_dir, for
    the jobs started at `since` or later, and for a sweep over seeds summary_seeds.csv and a
    second table in summary.md, by configuration; returns the job rows."""
    rows = job_rows(sweep_dir, since)
    scores = [key for key in SCORE_KEYS if any(key in row for row in rows)]
    columns = ["job", "overrides", "status", *scores, "dir"]
    write_csv(sweep_dir / "summary.csv", columns, rows)
    lines = markdown_table(columns, rows, markdown_cell)
    if seeded(rows):
        by_configuration = seed_rows(rows)
        seed_columns = [key for key in SEED_COLUMNS
                        if any(key in row for row in by_configuration)]
        write_csv(sweep_dir / "summary_seeds.csv", seed_columns, by_configuration)
        lines += ["", "## Over seeds", "",
                  "Mean test score over each configuration's seeds; seed_ci95: the 95% interval "
                  "of that mean from the spread across seeds (t-distribution); episode_ci95: "
                  "the runs' mean 95% interval over test episodes.", ""]
        lines += markdown_table(seed_columns, by_configuration, markdown_cell)
    write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Writes the summary of a multirun when it ends, then ends with exit status 2 and one line
    per job that failed on a user's mistake. Hydra skips on_multirun_end when a job raises (a
    bug), so the summary is also written at exit: the failed job then gets its row."""

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None,
                          **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.started = time.time()
        try:
            check_group_choices(config.hydra.overrides.task, config.hydra.overrides.hydra,
                                config_name)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        atexit.register(self.write)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self.write)
        rows = self.write()
        failed = [row for row in rows if row["status"] != "ok"]
        if failed:
            for row in failed:
                print(f"job {row['job']} ({row['overrides']}): {row['status']}", file=sys.stderr)
            print(f"error: {len(failed)} of {len(rows)} jobs failed; see "
                  f"{self.sweep_dir / 'summary.md'}", file=sys.stderr)
            sys.exit(2)

    def write(self) -> list[dict[str, Any]]:
        if not self.sweep_dir.is_dir():  # no job started when composing failed
            return []
        return write_summary(self.sweep_dir, self.started)


def check_group_choices(overrides: Iterable[str], hydra_overrides: Iterable[str],
                        config_name: str | None) -> None:
    """Every value a sweep gives a config group (`algorithm=maml,protonet`) must be a config of
    that group in the running app's search path (configs/, --config-dir, and the
    `hydra.searchpath` among hydra_overrides): checked before any job runs."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        group = override.key_or_group
        choices = hydra_choices(group, hydra_overrides, config_name)
        if not choices:
            continue
        values = override.value()
        values = values.list if isinstance(values, ChoiceSweep) else [values]
        for value in values:
            if isinstance(value, str) and value not in choices:
                raise unknown_choice(group, value, choices)


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
