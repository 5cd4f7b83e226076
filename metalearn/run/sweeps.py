"""Multirun sweeps: checks of a sweep before its first job, a summary table of its jobs, and the
value that hyperparameter searches optimise.

`SweepSummary` (registered in configs/hydra/default.yaml) refuses, in one line and before any job
runs, a sweep whose group values or search settings are wrong (an `optimized_metric` that runs
of the dataset's task type do not report, `n_trials` < 1), and a sweep into a directory that
holds finished jobs unless it resumes them (`ckpt_path=last`) or replaces them
(`overwrite=true`). It writes `summary.csv` and `summary.md` into the sweep directory: one row
per job with its overrides, its test score with the 95% CI, its best meta-val score and its
directory; the jobs of this launch, and the jobs of earlier launches into the directory that
finished, so that a resumed sweep's summary keeps every result. A job without results.json is
listed as failed, with its error when the job ended on a user's mistake (error.txt, from
`record_job_error`): such a job does not stop the sweep, and the sweep then ends with exit
status 2, in one line when no trial of an Optuna search completed.

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
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from metalearn.errors import UserError, check_whole_number
from metalearn.evaluation.results import markdown_table, score_name
from metalearn.evaluation.statistics import seed_interval
from metalearn.files import atomic_write, write_text
from metalearn.paths import component_name
from metalearn.run.compose import hydra_choices, override_keys, unknown_choice
from metalearn.run.run_dir import ERROR_FILE, LAUNCH_RECORD, holds_a_run, write_launch_record

# The results.json scores a summary reports, for classification, regression and meta-RL runs.
SCORE_KEYS = ("test_acc", "test_acc_ci95", "best_val_acc",
              "test_mse", "test_mse_ci95", "best_val_mse",
              "test_return", "test_return_ci95", "best_val_return")
FAILED = "failed (no results.json)"


#: the score of each task type, as results.json names it (test_acc, best_val_mse, ...)
SCORES = {"classification": "acc", "regression": "mse", "reinforcement": "return"}


def modified(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def recorded_jobs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep: the folders holding a launch record (.hydra/), which
    every job of a sweep leaves (`SweepSummary.on_job_end`)."""
    return [overrides.parent.parent for overrides in
            sweep_dir.glob(f"**/{LAUNCH_RECORD}/overrides.yaml")]


def job_status(job_dir: Path) -> str:
    """How the job's latest launch ended: its results (written after its record), its error
    (error.txt, newer than any results), or neither (a bug stopped it, or a kill)."""
    results = modified(job_dir / "results.json")
    error = modified(job_dir / ERROR_FILE)
    if error is not None and (results is None or error >= results):
        return "failed: " + (job_dir / ERROR_FILE).read_text().strip()
    if results is not None and results >= modified(job_dir / LAUNCH_RECORD / "overrides.yaml"):
        return "ok"
    return FAILED


def launched_since(job_dir: Path, since: float) -> bool:
    """Whether the job ran at `since` or later: it wrote its record, its results or its error."""
    times = [modified(job_dir / name) for name in
             (f"{LAUNCH_RECORD}/overrides.yaml", "results.json", ERROR_FILE)]
    return max(time for time in times if time is not None) >= since


def job_row(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    overrides = list(OmegaConf.load(job_dir / LAUNCH_RECORD / "overrides.yaml"))
    row = {
        "job": OmegaConf.load(job_dir / LAUNCH_RECORD / "hydra.yaml").hydra.job.num,
        "overrides": " ".join(overrides),
        "status": job_status(job_dir),
        "configuration": configuration(overrides),
    }
    if row["status"] == "ok":
        record = json.loads((job_dir / "results.json").read_text())
        row.update((key, record[key]) for key in SCORE_KEYS if key in record)
    row["dir"] = str(job_dir.relative_to(sweep_dir))
    return row


def job_rows(sweep_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """One row per job of a sweep that ran at `since` or later, and per job of an earlier launch
    into the directory that holds its results, by job number."""
    rows = []
    for job_dir in recorded_jobs(sweep_dir):
        row = job_row(job_dir, sweep_dir)
        if row["status"] == "ok" or launched_since(job_dir, since):
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
            # a one-episode run has no interval: the mean over the jobs that have one
            intervals = [job[f"test_{score}_ci95"] for job in done
                         if job.get(f"test_{score}_ci95") is not None]
            row[f"test_{score}_episode_ci95"] = (sum(intervals) / len(intervals) if intervals
                                                 else None)
        aggregated.append(row)
    return aggregated


SEED_COLUMNS = ("configuration", "seeds", "failed", "test_acc", "test_acc_seed_ci95",
                "test_acc_episode_ci95", "test_mse", "test_mse_seed_ci95", "test_mse_episode_ci95",
                "test_return", "test_return_seed_ci95", "test_return_episode_ci95")


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
    the jobs of `job_rows`, and for a sweep over seeds summary_seeds.csv and a second table in
    summary.md, by configuration; returns the job rows."""
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
    """Checks a multirun before its first job (`check_sweep`; a mistake ends it with exit status
    2 and one line), writes its summary when it ends, then ends with exit status 2 and one line
    per job that failed on a user's mistake. Hydra skips on_multirun_end when a job raises (a
    bug), so the summary is also written at exit: the failed job then gets its row."""

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None,
                          **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.started = time.time()
        self.launching_process = os.getpid()
        try:
            check_sweep(config, config_name)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        atexit.register(self.write)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """A job of a sweep whose directory holds no run when it ends (refused, or stopped
        before its first checkpoint) writes its launch record, which then replaces no run's, so
        that the summary lists the job; the last trial of a search whose every trial failed
        ends the search in one line."""
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        if not holds_a_run(job_dir):
            write_launch_record(job_dir, job_return.cfg)
        # the search can be ended only from the process that runs it (not a joblib worker)
        if os.getpid() == self.launching_process and no_trial_completed(config, self.started):
            print(f"error: all {config.hydra.sweeper.n_trials} trials of the search failed, so "
                  f"it found no best parameters; each trial's error is in "
                  f"{self.sweep_dir / 'summary.md'}", file=sys.stderr)
            sys.exit(2)

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


def no_trial_completed(config: DictConfig, since: float) -> bool:
    """Whether the job just ended was the last trial of an Optuna search, every trial of this
    search failed on a user's mistake, and the study holds no completed trial of an earlier
    search (Optuna would then end with a traceback: it has no best trial)."""
    n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    if n_trials is None or config.hydra.job.num != n_trials - 1:
        return False
    sweep_dir = Path(config.hydra.sweep.dir)
    trials = [job for job in recorded_jobs(sweep_dir) if launched_since(job, since)]
    if not all(job_status(job).startswith("failed: ") for job in trials):
        return False
    return not stored_trial_completed(config.hydra.sweeper)


def stored_trial_completed(sweeper: DictConfig) -> bool:
    """Whether the search's study, where it is stored in a database, holds a completed trial."""
    if sweeper.get("storage") is None:
        return False
    import optuna  # only a search that stores its study needs it

    study = optuna.load_study(study_name=sweeper.get("study_name"), storage=sweeper.storage)
    return any(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials)


def check_sweep(config: DictConfig, config_name: str | None) -> None:
    """What can be checked before a sweep's first job: the group values, the search settings and
    the sweep directory."""
    check_group_choices(config.hydra.overrides.task, config.hydra.overrides.hydra, config_name)
    n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    if n_trials is not None:
        check_whole_number("hydra.sweeper.n_trials", n_trials)
    if config.get("optimized_metric") is not None:
        check_optimized_metric(config)
    check_sweep_dir(Path(config.hydra.sweep.dir), config)


def check_sweep_dir(sweep_dir: Path, config: DictConfig) -> None:
    """A sweep directory holding finished jobs (a checkpoint or results) is refused unless the
    sweep resumes them (ckpt_path=last) or replaces them (overwrite=true): launched again, its
    jobs would each be refused, and its summary would list them as failed."""
    if config.get("ckpt_path") == "last" or config.get("overwrite"):
        return
    finished = [job for job in recorded_jobs(sweep_dir) if holds_a_run(job)]
    if finished:
        raise UserError(f"sweep directory {sweep_dir} holds {len(finished)} finished "
                        f"job{'s' if len(finished) > 1 else ''}; resume the sweep with "
                        "ckpt_path=last (and the same overrides), replace its jobs with "
                        "overwrite=true, or choose another hydra.sweep.dir")


def dataset_task_types(dataset: DictConfig) -> list[str]:
    """The task types a dataset config can give: its family's, or both where its target is a
    function that decides when it reads the data (a feature table)."""
    task_type = getattr(get_object(dataset._target_), "task_type", None)
    return [task_type] if task_type in SCORES else ["classification", "regression"]


def better_direction(key: str) -> str:
    """Which way a results.json score improves: errors and interval widths go down."""
    return "minimize" if "mse" in key or key.endswith("ci95") else "maximize"


def check_optimized_metric(config: DictConfig) -> None:
    """optimized_metric must be a score that runs of the dataset's task type report: the best
    meta-val score, `best_` and the monitor (what a search should optimise), or a `test_`
    score; and the sweeper's direction must improve it."""
    key, dataset = config.optimized_metric, config.get("dataset")
    if dataset is None or "_target_" not in dataset:
        return
    task_types = dataset_task_types(dataset)
    scores = [SCORES[task_type] for task_type in task_types]
    monitor = config.get("monitor")
    bests = list(dict.fromkeys(f"best_{(monitor or f'val/{score}').replace('/', '_')}"
                               for score in scores))
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    direction = getattr(direction, "name", direction)  # Optuna's default is an enum member
    if key not in bests and not any(key.startswith(f"test_{score}") for score in scores):
        turn = better_direction(bests[0])
        hint = f" with hydra.sweeper.direction={turn}" if direction not in (None, turn) else ""
        raise UserError(f"optimized_metric={key!r} is not a score of {' or '.join(task_types)} "
                        f"runs (dataset={component_name(dataset)}); optimise "
                        f"{' or '.join(bests)}, the best meta-val score{hint}")
    if isinstance(direction, str) and direction != better_direction(key):
        raise UserError(f"optimized_metric={key!r} improves as it "
                        f"{'falls' if better_direction(key) == 'minimize' else 'rises'}, and "
                        f"hydra.sweeper.direction={direction} would search for its worst; set "
                        f"hydra.sweeper.direction={better_direction(key)}")


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
