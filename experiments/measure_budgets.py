"""Runs the learning tests' CPU budgets (tests/budgets.py) one after another and reports, for
each, the meta-test score with its 95% interval, the outer steps and the wall time.

Run it alone on an idle machine: the wall times are what the tests cost.
    python experiments/measure_budgets.py [--only protonet,fomaml] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from metalearn.paths import project_root
from metalearn.run.compose import compose_config
from metalearn.run.training import train

# the budgets live with the tests; put the repository first so that its tests/ is the one found
sys.path.insert(0, project_root())
from tests.budgets import BUDGETS  # noqa: E402


def score(record: dict) -> str:
    if "test_pair_acc" in record:  # Siamese: N-way accuracy, then pair verification accuracy
        return (f"{100 * record['test_acc']:.2f}% +- {100 * record['test_acc_ci95']:.2f}% "
                f"(pairs {100 * record['test_pair_acc']:.2f}% +- "
                f"{100 * record['test_pair_acc_ci95']:.2f}%)")
    if "test_acc_presentation_1" in record:  # MANN, NTM: also accuracy by presentation number
        by_presentation = " / ".join(f"{100 * record[f'test_acc_presentation_{n}']:.1f}%"
                                     for n in (1, 2, 3, 5, 10))
        return (f"{100 * record['test_acc']:.2f}% +- {100 * record['test_acc_ci95']:.2f}% "
                f"(presentations 1, 2, 3, 5, 10: {by_presentation})")
    if "test_acc" in record:
        return f"{100 * record['test_acc']:.2f}% +- {100 * record['test_acc_ci95']:.2f}%"
    if "test_return" in record:  # meta-RL: return after adaptation, 95% CI over tasks
        return f"return {record['test_return']:.2f} +- {record['test_return_ci95']:.2f}"
    return f"MSE {record['test_mse']:.3f} +- {record['test_mse_ci95']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated name prefixes to run")
    parser.add_argument("--out", default=f"{project_root()}/outputs/budgets.md")
    args = parser.parse_args()
    runs = {name: budget.overrides for name, budget in BUDGETS.items()}
    for budget in BUDGETS.values():
        budget.prepare()
    if args.only:
        prefixes = args.only.split(",")
        runs = {k: v for k, v in runs.items() if any(k.startswith(p) for p in prefixes)}
    lines = ["| run | test score (95% CI): Omniglot 5-way 1-shot accuracy, sinusoid query MSE "
             "| test episodes | outer steps | wall time |", "|---|---|---|---|---|"]
    for name, overrides in runs.items():
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = compose_config(overrides, run_dir)
            started = time.time()
            record = train(cfg)
            elapsed = time.time() - started
        lines.append(f"| {name} | {score(record)} | "
                     f"{record.get('test_episodes', record.get('test_tasks'))} | "
                     f"{record['train_steps']} | {elapsed:.0f} s |")
        print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
