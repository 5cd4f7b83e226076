"""The reproduction table: every classification algorithm meta-trained on Omniglot (the vinyals
split, with rotations) and tested on 600 episodes of 5-way 1-shot and of 5-way 5-shot, beside the
figure its paper reports.

    python experiments/reproduce.py budget=cpu10 [algorithms=maml,protonet] [shots=1,5] [jobs=2]
    python experiments/reproduce.py budget=paper          # the papers' schedules: for a GPU

Each run is `python train.py` in its own process, with the algorithm's named paper setup
(`experiment=<algorithm>_omniglot`) where there is one, else its default config, at the shot of
the row (train and test). `budget=cpu10` stops meta-training after 10 minutes of the run's CPU
time (`callbacks=cpu_time_limit`: a busy shared machine slows a row down but does not shrink its
budget, as a wall-clock `trainer.max_time` would), with torch and its libraries held to one
thread, so that a 2-core machine runs two rows at once (`jobs=2`); the meta-test after it is not
counted. `budget=paper` runs each config's own schedule.

Runs go to outputs/reproduction/<budget>/<algorithm>_<shot>shot/. As each finishes, its scores
join experiments/results/reproduction_<budget>.json (kept in the repository) and the table,
experiments/results/reproduction_<budget>.md (cpu10: reproduction.md), is written again from it;
a row already there is not run again (rerun=true runs it anew), so the table fills up over
several sittings and machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from metalearn.files import write_text

ROOT = Path(__file__).resolve().parents[1]
#: the classification algorithms, in the order of the table
ALGORITHMS = ["protonet", "matchingnet", "relationnet", "siamese", "maml", "fomaml", "metasgd",
              "anil", "reptile", "meta_lstm", "metanet", "mann", "ntm", "baseline", "baseline_pp",
              "rfs"]
COMMON = ["dataset=omniglot", "dataset.split=vinyals", "dataset.rotations=true",
          "episode.n_way=5", "episode.test_episodes=600"]
BUDGETS = {
    # time, not epochs, ends meta-training
    "cpu10": ["callbacks=cpu_time_limit", "callbacks.cpu_time_limit.minutes=10",
              "num_epochs=100000"],
    "paper": [],
}
#: the published Omniglot 5-way figures (accuracy %, 1-shot and 5-shot; None: not published), and
#: where they come from. The papers' splits differ (MAML, Reptile and Relation Networks draw 1,200
#: training characters at random; ProtoNet and Chen et al. use the vinyals split files), and MAML's,
#: FOMAML's and Reptile's figures use test-batch BatchNorm statistics, as transductive_bn does.
PAPER = {
    "protonet": (98.8, 99.7, "Snell et al. 2017, Omniglot table"),
    "matchingnet": (98.1, 98.9, "Vinyals et al. 2016, table 1"),
    "relationnet": (99.6, 99.8, "Sung et al. 2018, Omniglot table"),
    "siamese": (96.7, 98.4, "Vinyals et al. 2016, table 1 (Koch et al. report 20-way only)"),
    "maml": (98.7, 99.9, "Finn et al. 2017, table 1"),
    "fomaml": (98.3, 99.2, "Nichol et al. 2018, Omniglot table (1st-order MAML)"),
    "metasgd": (99.53, 99.93, "Li et al. 2017, Omniglot table"),
    "anil": (None, None, "Raghu et al. 2020 report Omniglot 20-way only"),
    "reptile": (97.68, 99.48, "Nichol et al. 2018, Omniglot table (transduction)"),
    "meta_lstm": (None, None, "Ravi and Larochelle 2017 report mini-ImageNet only"),
    "metanet": (98.95, None, "Munkhdalai and Yu 2017, table 1"),
    "mann": (82.8, 94.9, "Vinyals et al. 2016, table 1, read from Santoro et al.'s curves"),
    "ntm": (None, None, "Graves et al. 2014 has no few-shot result"),
    "baseline": (94.89, 99.12, "Chen et al. 2019, appendix (as recalled; not checked)"),
    "baseline_pp": (95.41, 99.38, "Chen et al. 2019, appendix (as recalled; not checked)"),
    "rfs": (None, None, "Tian et al. 2020 do not report Omniglot"),
}


def parse(arguments: list[str]) -> dict[str, str]:
    settings = {"budget": "cpu10", "algorithms": ",".join(ALGORITHMS), "shots": "1,5",
                "jobs": "1", "rerun": "false"}
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key not in settings or not value:
            sys.exit(f"error: {argument!r}: use key=value with a key of {', '.join(settings)}")
        settings[key] = value
    if settings["budget"] not in BUDGETS:
        sys.exit(f"error: budget={settings['budget']!r} is not one of: {', '.join(BUDGETS)}")
    unknown = set(settings["algorithms"].split(",")) - set(ALGORITHMS)
    if unknown:
        sys.exit(f"error: algorithms: {', '.join(sorted(unknown))} not among {', '.join(ALGORITHMS)}")
    return settings


def run_overrides(algorithm: str, shot: int, budget: str, run_dir: Path) -> list[str]:
    has_experiment = (ROOT / "configs" / "experiment" / f"{algorithm}_omniglot.yaml").is_file()
    setup = [f"experiment={algorithm}_omniglot"] if has_experiment else [f"algorithm={algorithm}"]
    return [*setup, *COMMON, f"episode.k_shot={shot}", *BUDGETS[budget],
            f"hydra.run.dir={run_dir}", "overwrite=true"]


def run(algorithm: str, shot: int, budget: str, run_dir: Path, one_thread: bool) -> dict | None:
    """Runs one row; its scores, or None when the run failed (its log says why)."""
    env = dict(os.environ)
    if one_thread:  # a core per run: torch, OpenMP and BLAS held to one thread
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        finished = subprocess.run(
            [sys.executable, "train.py", *run_overrides(algorithm, shot, budget, run_dir)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    results = run_dir / "results.json"
    done = finished.returncode == 0 and results.is_file()
    print(f"{algorithm} {shot}-shot: {'done' if done else 'FAILED'} ({run_dir})", flush=True)
    if not done:
        return None
    record = json.loads(results.read_text())
    return {"test_acc": record["test_acc"], "test_acc_ci95": record["test_acc_ci95"],
            "train_steps": record["train_steps"], "date": date.today().isoformat(),
            "setup": run_overrides(algorithm, shot, budget, run_dir)[0],
            **({"clock": "cpu"} if budget == "cpu10" else {})}


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%" if value < 99.5 else f"{value:.2f}%"


def row_key(algorithm: str, shot: int) -> str:
    return f"{algorithm}_{shot}shot"


def table(budget: str, records: dict[str, dict], shots: list[int]) -> str:
    """The Markdown table of every algorithm and shot, from the finished rows' `records`."""
    lines = [f"# Reproduction: Omniglot 5-way, budget {budget}", "",
             "Written by `python experiments/reproduce.py budget=" + budget + "`. Meta-test "
             "accuracy on the vinyals split's 600 fixed test episodes (15 queries per class) with "
             "its 95% CI, of the checkpoint of best meta-validation accuracy (validated at the "
             "end of each epoch: it can be older than the last step); outer steps reached; the "
             "paper's figure and the gap (ours - paper). "
             "Rows stop at a fixed budget, not at convergence: read the gap beside the outer "
             "steps (a setup whose step costs more, such as second-order MAML at 5 shots, gets "
             "fewer of them).",
             "", "| algorithm | shot | setup | ours | outer steps | paper | gap | source | run date |",
             "|---|---|---|---|---|---|---|---|---|"]
    for algorithm in ALGORITHMS:
        for shot in shots:
            record = records.get(row_key(algorithm, shot))
            paper = PAPER[algorithm][0 if shot == 1 else 1]
            if record is None:
                lines.append(f"| {algorithm} | {shot} | | not run | | {cell(paper)} | | "
                             f"{PAPER[algorithm][2]} | |")
                continue
            ours = 100 * record["test_acc"]
            gap = "" if paper is None else f"{ours - paper:+.1f}"
            setup = f"`{record['setup']}`" if "setup" in record else ""
            lines.append(f"| {algorithm} | {shot} | {setup} | {ours:.2f}% +- "
                         f"{100 * record['test_acc_ci95']:.2f}% | {record['train_steps']} | "
                         f"{cell(paper)} | {gap} | {PAPER[algorithm][2]} | {record['date']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    settings = parse(sys.argv[1:])
    budget, jobs = settings["budget"], int(settings["jobs"])
    shots = [int(shot) for shot in settings["shots"].split(",")]
    out_root = ROOT / "outputs" / "reproduction" / budget
    results = ROOT / "experiments" / "results"
    records_path = results / f"reproduction_{budget}.json"
    table_path = results / ("reproduction.md" if budget == "cpu10" else f"reproduction_{budget}.md")
    records = json.loads(records_path.read_text()) if records_path.is_file() else {}
    pending = [(algorithm, shot) for algorithm in settings["algorithms"].split(",")
               for shot in shots
               if settings["rerun"] == "true" or row_key(algorithm, shot) not in records]
    lock = threading.Lock()

    def run_row(algorithm: str, shot: int) -> None:
        record = run(algorithm, shot, budget, out_root / row_key(algorithm, shot),
                     budget == "cpu10")
        if record is not None:
            with lock:  # each finished row saved at once: a stopped sitting loses no row
                # read again: another sitting may have saved rows since (its rows are kept)
                saved = json.loads(records_path.read_text()) if records_path.is_file() else {}
                records.update(saved, **{row_key(algorithm, shot): record})
                write_text(records_path, json.dumps(records, indent=1, sort_keys=True) + "\n")
                write_text(table_path, table(budget, records, [1, 5]))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(run_row, algorithm, shot) for algorithm, shot in pending]:
            future.result()
    write_text(table_path, table(budget, records, [1, 5]))
    print(f"Table: {table_path}")


if __name__ == "__main__":
    main()
