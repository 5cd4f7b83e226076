"""Meta-reinforcement learning measured: the numbers of experiments/results/rl.md.

Learning: for each env family, each method is trained by train.py for a CPU budget
(callbacks=cpu_time_limit, one thread, `--jobs` at once) and tested at its best meta-val
checkpoint on the same 40 held-out tasks with the same rollout seeds (eval_seed 0): the average
return before adaptation and after 1, 2 and 3 policy-gradient steps, each with its 95% interval
over the tasks, and each method's paired difference to MAML task by task. One plot per env of
the return against the adaptation steps (the MAML paper's figure 5 and 6).

Speed (`--speed`): the environment steps per second of the rollouts for every family, and where
a meta-iteration of MAML-TRPO spends its time: simulation, the policy's forward passes during
the rollouts, the inner policy-gradient step (linear baseline, advantages, adaptation) and the
outer TRPO step (conjugate gradient on Fisher-vector products through the inner step, line
search). CPU time, one thread.
    python experiments/rl_benchmark.py [--minutes 6] [--jobs 2] [--envs navigation2d,...]
        [--methods maml_rl,...] [--rows earlier.json] [--speed]
"""

from __future__ import annotations

import argparse
import json
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
import torch  # noqa: E402

from metalearn.paths import project_root  # noqa: E402

ROOT = Path(project_root())
RESULTS = ROOT / "experiments" / "results"
TEST_TASKS = 40
#: method name -> (algorithm config, extra overrides)
METHODS = {
    "MAML (TRPO, second order)": ("maml_rl", []),
    "MAML (TRPO, first order)": ("maml_rl", ["algorithm.first_order=true"]),
    "ProMP": ("promp", []),
    "pretrained": ("pretrained_rl", []),
    "oracle (goal observed)": ("pretrained_rl", ["env.oracle=true"]),
    "random initialisation": ("random_rl", ["trainer.max_steps=1"]),
}
REFERENCE = "MAML (TRPO, second order)"
#: each family's settings: the paper's where they fit the budget, and why where they do not
ENVS = {
    # the paper's: 20 tasks of 20 rollouts a step, horizon 100
    "navigation2d": ["env=navigation2d"],
    # the paper: 40 tasks x 20 rollouts of 200 steps; 20 x 10 here, so that a CPU budget of
    # minutes holds more than a handful of outer steps
    "half_cheetah_vel": ["env=half_cheetah_vel", "episode.meta_batch_size=20",
                         "algorithm.episodes_per_task=10"],
    "half_cheetah_dir": ["env=half_cheetah_dir", "episode.meta_batch_size=20",
                         "algorithm.episodes_per_task=10"],
}
#: the methods run on the MuJoCo families (each outer step costs about a minute there)
CHEETAH_METHODS = ("MAML (TRPO, first order)", "pretrained", "random initialisation")


def run_job(env: str, method: str, minutes: float, work: Path) -> dict:
    """train.py on `env` for `minutes` of CPU time; its test writes the return by steps."""
    algorithm, extra = METHODS[method]
    run_dir = work / "runs" / f"{env}_{algorithm}_{abs(hash(method)) % 10**6}"
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                       WANDB_MODE="offline")
    command = [sys.executable, str(ROOT / "train.py"), f"algorithm={algorithm}", *ENVS[env],
               *extra, f"episode.test_tasks={TEST_TASKS}", "callbacks=cpu_time_limit",
               f"callbacks.cpu_time_limit.minutes={minutes}", "num_epochs=100000",
               "episode.num_tasks=200", "eval_frequency=5", "test_ckpt=best",
               f"hydra.run.dir={run_dir}"]
    started = time.time()
    done = subprocess.run(command, env=environment, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        print(env, method, error, flush=True)
        return {"env": env, "method": method, "error": error}
    record = json.loads((run_dir / "results.json").read_text())
    print(env, method, f"return after 3 steps {record['return_by_steps']['3']['mean']:.2f}",
          f"({time.time() - started:.0f} s wall)", flush=True)
    return {"env": env, "method": method, "cpu_minutes": minutes, "record": record}


def paired_to_reference(rows: list[dict], env: str) -> dict[str, dict]:
    """Each method's return after 3 steps minus the reference's, task by task (the same tasks
    and rollout seeds), with its 95% interval and the paired t-test's p."""
    from metalearn.evaluation.statistics import paired_difference

    returns = {row["method"]: torch.tensor(row["record"]["per_task_returns"])[:, 3]
               for row in rows if row["env"] == env and "record" in row}
    if REFERENCE not in returns:
        return {}
    return {method: paired_difference(values, returns[REFERENCE])
            for method, values in returns.items() if method != REFERENCE}


def cell(entry: dict) -> str:
    return f"{entry['mean']:.2f} ± {entry['ci95']:.2f}" if entry["ci95"] is not None else (
        f"{entry['mean']:.2f}")


def learning_tables(rows: list[dict]) -> list[str]:
    lines = []
    for env in dict.fromkeys(row["env"] for row in rows):
        env_rows = [row for row in rows if row["env"] == env]
        paired = paired_to_reference(rows, env)
        lines += [f"## {env}", "",
                  f"Settings: `{' '.join(ENVS[env])}`; {TEST_TASKS} held-out tasks "
                  f"(eval_seed 0), the same rollout seeds for every method.", "",
                  "| method | outer steps | CPU min | return, 0 steps | 1 step | 2 steps | "
                  f"3 steps | 3 steps: method - {REFERENCE} (paired) |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in env_rows:
            if "error" in row:
                lines.append(f"| {row['method']} | stopped: {row['error']} |")
                continue
            record, difference = row["record"], paired.get(row["method"])
            steps = [cell(record["return_by_steps"][str(k)]) for k in range(4)]
            versus = (f"{difference['difference']:+.2f} ± {difference['difference_ci95']:.2f} "
                      f"(p {difference['p_ttest']:.2g})" if difference else "")
            lines.append(f"| {row['method']} | {record['train_steps']} | {row['cpu_minutes']} | "
                         + " | ".join(steps) + f" | {versus} |")
        lines += ["", f"![{env}](rl_{env}.png)", ""]
    return lines


def plot(rows: list[dict], env: str, path: Path) -> None:
    """Return against adaptation steps for every method of one env, with 95% bands."""
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for row in rows:
        if row["env"] != env or "record" not in row:
            continue
        by_steps = row["record"]["return_by_steps"]
        steps = sorted(int(k) for k in by_steps)
        means = [by_steps[str(k)]["mean"] for k in steps]
        cis = [by_steps[str(k)]["ci95"] or 0.0 for k in steps]
        axes.errorbar(steps, means, yerr=cis, marker="o", capsize=3, label=row["method"],
                      linestyle="--" if "MAML" not in row["method"] else "-")
    axes.set(xlabel="policy-gradient adaptation steps", ylabel="average return (95% CI)",
             title=f"{env}: {TEST_TASKS} held-out tasks", xticks=[0, 1, 2, 3])
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# Speed ------------------------------------------------------------------------------------------
def steps_per_second(env: str, tasks: int, episodes: int) -> dict:
    """Env steps per CPU second of one rollout of a freshly initialised policy, and the share
    of it spent in the policy's forward passes."""
    from metalearn.run.build import build
    from tests.conftest import make_config

    with tempfile.TemporaryDirectory() as scratch:
        _, model = build(make_config(["algorithm=maml_rl", f"env={env}",
                                      f"algorithm.episodes_per_task={episodes}"], Path(scratch)))
    drawn = model.envs.sample_tasks(tasks, torch.Generator().manual_seed(0))
    params = model.task_params(tasks, differentiable=False)
    policy, forward_time = model.policy_function(params), [0.0]

    def timed(observations):
        started = time.process_time()
        distribution = policy(observations)
        forward_time[0] += time.process_time() - started
        return distribution

    model.envs.rollout(timed, drawn, episodes, 0)  # builds the pool of envs, untimed
    forward_time[0] = 0.0
    started = time.process_time()
    trajectories = model.envs.rollout(timed, drawn, episodes, 1)
    elapsed = time.process_time() - started
    taken = int(trajectories.mask.sum())
    return {"env": env, "tasks": tasks, "episodes": episodes, "horizon": model.envs.horizon,
            "steps": taken, "cpu_s": elapsed, "steps_per_s": taken / elapsed,
            "policy_share": forward_time[0] / elapsed}


def meta_iteration_split(env: str, overrides: list[str], first_order: bool) -> dict:
    """CPU seconds of one MAML-TRPO meta-iteration by part (the second of two, after warm-up)."""
    from metalearn.algorithms.policy_gradient import trpo_step
    from metalearn.run.build import build
    from tests.conftest import make_config

    with tempfile.TemporaryDirectory() as scratch:
        _, model = build(make_config(["algorithm=maml_rl", *overrides,
                                      f"algorithm.first_order={str(first_order).lower()}"],
                                     Path(scratch)))
    tasks = model.envs.sample_tasks(20, torch.Generator().manual_seed(0))  # the paper's 20
    parts = {}
    for seed in (0, 1):
        started = time.process_time()
        trajectories, sampled_with = model.adaptation_rollouts(tasks, seed, 0)
        pre = time.process_time()
        adapted = model.adapt(sampled_with[0], trajectories[0], create_graph=False)
        inner = time.process_time()
        samples = model.samples(tasks, seed)  # both rollouts and advantages, as training does
        sampled = time.process_time()
        trpo_step(list(model.policy.parameters()), lambda: model.surrogate(samples),
                  lambda: model.kl_after_adaptation(samples), model.max_kl, model.damping,
                  model.cg_iterations, model.backtrack_ratio, model.max_backtracks)
        outer = time.process_time()
        del adapted
        parts = {"one rollout": pre - started, "inner step": inner - pre,
                 "sampling (2 rollouts + advantages)": sampled - inner,
                 "outer TRPO step": outer - sampled}
    return {"env": env, "first_order": first_order, **parts,
            "meta-iteration": parts["sampling (2 rollouts + advantages)"]
            + parts["outer TRPO step"]}


def speed_tables() -> list[str]:
    families = [("navigation2d", 20, 20), ("cartpole_varied", 20, 20),
                ("pendulum_varied", 20, 20), ("half_cheetah_vel", 20, 10)]
    rates = [steps_per_second(*family) for family in families]
    lines = ["## Speed (CPU time, one thread)", "",
             "Rollouts of a freshly initialised policy (steps taken; an episode that ends early "
             "stops being simulated):", "",
             "| env | tasks x rollouts x horizon | steps taken | CPU s | env steps/s | "
             "policy forward share |", "|---|---|---|---|---|---|"]
    for rate in rates:
        lines.append(f"| {rate['env']} | {rate['tasks']} x {rate['episodes']} x "
                     f"{rate['horizon']} | {rate['steps']} | {rate['cpu_s']:.2f} | "
                     f"{rate['steps_per_s']:,.0f} | {100 * rate['policy_share']:.0f}% |")
    splits = [meta_iteration_split("navigation2d", ["env=navigation2d"], False),
              meta_iteration_split("navigation2d", ["env=navigation2d"], True)]
    lines += ["", "One MAML-TRPO meta-iteration on navigation2d (20 tasks x 20 rollouts x 100 "
              "steps, policy 100-100), CPU seconds by part:", "",
              "| order | one rollout (simulation + policy) | inner PG step | sampling (2 "
              "rollouts + baselines) | outer TRPO step | meta-iteration | TRPO share |",
              "|---|---|---|---|---|---|---|"]
    for split in splits:
        lines.append(
            f"| {'first' if split['first_order'] else 'second'} | {split['one rollout']:.2f} | "
            f"{split['inner step']:.2f} | {split['sampling (2 rollouts + advantages)']:.2f} | "
            f"{split['outer TRPO step']:.2f} | {split['meta-iteration']:.2f} | "
            f"{100 * split['outer TRPO step'] / split['meta-iteration']:.0f}% |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="CPU minutes per training")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--envs", default="navigation2d")
    parser.add_argument("--methods", help="comma-separated method names (default: all)")
    parser.add_argument("--rows", help="an earlier run's .json whose rows to keep (rerun rows "
                                       "replace theirs)")
    parser.add_argument("--speed", action="store_true", help="also measure the speed")
    parser.add_argument("--out", default=str(RESULTS / "rl.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = args.methods.split(",") if args.methods else list(METHODS)
    jobs = [(env, method) for env in args.envs.split(",") for method in chosen
            if env == "navigation2d" or method in CHEETAH_METHODS or args.methods]
    rows = []
    if jobs:
        with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_job, env, method, args.minutes, Path(scratch))
                       for env, method in jobs]
            rows = [future.result() for future in futures]
    out = Path(args.out)
    if args.rows:
        rerun = {(row["env"], row["method"]) for row in rows}
        rows = [row for row in json.loads(Path(args.rows).read_text())
                if (row["env"], row["method"]) not in rerun] + rows
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    for env in dict.fromkeys(row["env"] for row in rows):
        plot(rows, env, out.parent / f"rl_{env}.png")
    lines = ["# Meta-reinforcement learning: return by adaptation steps", "",
             f"Written by `python experiments/rl_benchmark.py` on {time.strftime('%Y-%m-%d')}, "
             "one thread a training; returns are averages over each task's rollouts, with 95% "
             "intervals over the held-out tasks.", "", *learning_tables(rows)]
    if args.speed:
        lines += speed_tables()
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the speed measurements build with the tests' config helper
    main()
