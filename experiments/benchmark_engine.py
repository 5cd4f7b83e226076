"""The engine, measured side by side in one run (the machine is noisy: read ratios, not seconds).

1. Meta-training steps of the MAML family on Omniglot 5-way 1-shot, 15 queries, meta-batch 32,
   Conv4 (64 channels) and learn2learn's OmniglotFC: metalearn's step (`MetaLearner
   .meta_train_step`, batched and per_task backends, and compiled) against a plain
   learn2learn loop written as learn2learn's examples/vision/maml_omniglot.py (clone, adapt,
   query loss, backward task by task, one Adam step), on the same tasks and initial weights.
2. ProtoNet steps (5-way 1-shot and 20-way 5-shot) against a plain PyTorch step.
3. What a user gets, each step in a fresh process: the plain loops under the system's malloc
   against metalearn under its own settings (metalearn/run/allocator.py) and under the system's
   (METALEARN_SYSTEM_MALLOC=1), for ProtoNet 20-way 5-shot and MAML on Conv4; and Conv4's first
   two layers' forward GFLOP/s under both.
4. Peak memory (RSS) and step time of second-order MAML steps, by backend, shots and inner
   steps, and with the memory settings (backward_per_task, checkpoint_inner_steps).
5. Meta-training tasks per second through train.py (Lightning included) for every algorithm, and
   the sampler's share of a step; seconds per test episode (batches of 8, as train.py tests).

Contenders alternate within each repeat; each row gives the ratio of the plain loop's time to
metalearn's as min / median / max over the repeats (above 1: metalearn is faster).
    python experiments/benchmark_engine.py [--repeats 5] [--no-compile] [--quick]
        [--only memory ...]
writes experiments/results/bench.md (--only: those sections of it, the others kept).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import learn2learn as l2l
import lightning as L
import torch
import torch.nn.functional as F

from metalearn.api import MetaLearner, TaskSampler, evaluating
from metalearn.data.episodes import TaskBatch
from metalearn.evaluation.protocol import score_episodes
from metalearn.files import write_text
from metalearn.run.allocator import tune_malloc
from metalearn.run.build import build
from metalearn.run.compose import compose_config
from metalearn.run.training import train

RESULTS = Path(__file__).parent / "results" / "bench.md"
ALGORITHMS = ("protonet", "matchingnet", "relationnet", "siamese", "maml",
              "maml algorithm.backend=per_task", "fomaml", "metasgd", "anil", "reptile",
              "reptile algorithm.backend=per_task", "meta_lstm", "metanet", "mann", "ntm")


# Timing ------------------------------------------------------------------------------------------
def alternate(contenders: dict[str, Callable[[], object]], repeats: int,
              steps: int) -> dict[str, list[float]]:
    """Seconds per call of each contender: one warm-up call each, then `repeats` rounds in which
    each contender makes `steps` calls in turn."""
    for run in contenders.values():
        run()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            started = time.perf_counter()
            for _ in range(steps):
                run()
            times[name].append((time.perf_counter() - started) / steps)
    return times


def ratio_cell(reference: list[float], contender: list[float]) -> str:
    """min / median / max over the rounds of reference time / contender time."""
    ratios = sorted(r / c for r, c in zip(reference, contender))
    return f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}"


def seconds(times: list[float]) -> str:
    return f"{statistics.median(times):.3f}"


# 1. The MAML family against a plain learn2learn loop -------------------------------------------
def plain_learn2learn_step(algorithm: str, network: torch.nn.Module, inner_steps: int,
                           first_order: bool) -> Callable[[TaskBatch], None]:
    """learn2learn's maml_omniglot.py step (ANIL: its anil_fc100.py shape: a body, then a MAML
    head), with Adam 0.001 and the inner rate of metalearn's config."""
    if algorithm == "anil":
        body, head = network.body, network.learner.module
        wrapper = l2l.algorithms.MAML(head, lr=0.4, first_order=first_order)
        parameters = [*body.parameters(), *wrapper.parameters()]
    else:
        body = None
        wrap = (l2l.algorithms.MetaSGD if algorithm == "metasgd" else l2l.algorithms.MAML)
        wrapper = wrap(network, lr=0.4, first_order=first_order)
        parameters = list(wrapper.parameters())
    optimizer = torch.optim.Adam(parameters, lr=0.001)

    def step(batch: TaskBatch) -> None:
        optimizer.zero_grad()
        for support_x, support_y, query_x, query_y in zip(*batch):
            if body is not None:
                support_x, query_x = body(support_x), body(query_x)
            learner = wrapper.clone()
            for _ in range(inner_steps):
                learner.adapt(F.cross_entropy(learner(support_x), support_y))
            (F.cross_entropy(learner(query_x), query_y) / batch.batch_size).backward()
        optimizer.step()
    return step


def maml_rows(batch: TaskBatch, repeats: int, compile_row: bool, quick: bool) -> list[str]:
    fc = lambda: l2l.vision.models.OmniglotFC(28 * 28, 5)  # noqa: E731
    # (label, algorithm, network (None: Conv4), inner steps, whether to compile it too)
    rows = [("MAML, Conv4, 1 step", "maml", None, 1, True),
            ("MAML, Conv4, 5 steps", "maml", None, 5, False),
            ("FOMAML, Conv4, 1 step", "fomaml", None, 1, False),
            ("Meta-SGD, Conv4, 1 step", "metasgd", None, 1, False),
            ("ANIL, Conv4, 1 step", "anil", None, 1, False),
            ("MAML, OmniglotFC, 1 step", "maml", fc, 1, True)]
    lines = ["| step (Omniglot 5-way 1-shot, 32 tasks) | plain l2l s/step | batched | "
             "per_task |" + (" batched, compiled |" if compile_row else ""),
             "|---|---|---|---|" + ("---|" if compile_row else "")]
    for label, algorithm, model, steps, compiled in rows[::5] if quick else rows:
        learners = {}
        for backend in ("batched", "per_task"):
            torch.manual_seed(0)
            learners[backend] = MetaLearner(algorithm, None if model is None else model(),
                                            inner_steps=steps, backend=backend)
        if compile_row and compiled:
            torch.manual_seed(0)
            learners["compiled"] = MetaLearner(algorithm, None if model is None else model(),
                                               inner_steps=steps, backend="batched",
                                               compile=True)
            started = time.perf_counter()
            learners["compiled"].meta_train_step(batch)
            compile_seconds = time.perf_counter() - started
        module = learners["batched"].module
        network = copy.deepcopy(module if algorithm == "anil" else module.learner.module).train()
        plain = plain_learn2learn_step(algorithm, network, steps, algorithm == "fomaml")
        contenders = {"plain": lambda: plain(batch)}
        contenders.update({name: (lambda learner=learner: learner.meta_train_step(batch))
                           for name, learner in learners.items()})
        times = alternate(contenders, repeats, 1)
        cells = [ratio_cell(times["plain"], times[name]) for name in learners]
        if compile_row and compiled:
            cells[-1] += f" (compiling: {compile_seconds:.0f} s)"
        elif compile_row:
            cells.append("")
        lines.append(f"| {label} | {seconds(times['plain'])} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


# 2. ProtoNet against a plain PyTorch step -------------------------------------------------------
def plain_protonet_step(backbone: torch.nn.Module) -> Callable[[TaskBatch], None]:
    """Embed support and query in one pass, class means, squared Euclidean distances."""
    optimizer = torch.optim.Adam(backbone.parameters(), lr=0.001)

    def step(batch: TaskBatch) -> None:
        optimizer.zero_grad()
        for support_x, support_y, query_x, query_y in zip(*batch):
            features = backbone(torch.cat([support_x, query_x]))
            support, query = features[:len(support_x)], features[len(support_x):]
            one_hot = F.one_hot(support_y).to(support.dtype)
            prototypes = one_hot.T @ support / one_hot.sum(0)[:, None]
            loss = F.cross_entropy(-torch.cdist(query, prototypes).pow(2), query_y)
            (loss / batch.batch_size).backward()
        optimizer.step()
    return step


def protonet_rows(repeats: int) -> list[str]:
    lines = ["| ProtoNet step (1 task, 15 queries per class) | plain PyTorch s/step | "
             "metalearn (ratio) |", "|---|---|---|"]
    for n_way, k_shot in ((5, 1), (20, 5)):
        batch = TaskSampler("omniglot", n_way=n_way, k_shot=k_shot, query_size=15,
                            seed=0).sample(1)
        torch.manual_seed(0)
        learner = MetaLearner("protonet", n_way=n_way, k_shot=k_shot)
        plain = plain_protonet_step(copy.deepcopy(learner.module.backbone))
        times = alternate({"plain": lambda: plain(batch),
                           "metalearn": lambda: learner.meta_train_step(batch)}, repeats, 5)
        lines.append(f"| {n_way}-way {k_shot}-shot | {seconds(times['plain'])} | "
                     f"{ratio_cell(times['plain'], times['metalearn'])} |")
        print(lines[-1], flush=True)
    return lines


# 3 and 4. Measured in fresh processes ------------------------------------------------------------
PROBES = {
    # seconds per step after a warm-up step: ProtoNet 20-way 5-shot (1 task) or a MAML-family
    # algorithm 5-way 1-shot (32 tasks), by metalearn (its default config) or the plain loop
    "step": """
import copy, sys, time, torch
sys.path.insert(0, sys.argv[3])
from benchmark_engine import plain_learn2learn_step, plain_protonet_step
from metalearn.api import MetaLearner, TaskSampler
algorithm, contender = sys.argv[1], sys.argv[2]
n_way, k_shot, tasks = (20, 5, 1) if algorithm == "protonet" else (5, 1, 32)
batch = TaskSampler("omniglot", n_way=n_way, k_shot=k_shot, query_size=15, seed=0).sample(tasks)
torch.manual_seed(0)
learner = MetaLearner(algorithm, n_way=n_way, k_shot=k_shot)
if contender == "metalearn":
    step = lambda: learner.meta_train_step(batch)
else:
    plain = (plain_protonet_step(copy.deepcopy(learner.module.backbone))
             if algorithm == "protonet" else plain_learn2learn_step(
                 algorithm, copy.deepcopy(learner.module.learner.module).train(), 1, False))
    step = lambda: plain(batch)
step()
count = 10 if algorithm == "protonet" else 3
started = time.perf_counter()
for _ in range(count):
    step()
print((time.perf_counter() - started) / count)
""",
    # GFLOP/s of Conv4's first layer (1 -> 64 channels, 28 x 28) and second (64 -> 64, 14 x 14)
    # forward on the 400 images of a 20-way 5-shot 15-query episode
    "layers": """
import time, torch
from metalearn.run.allocator import tune_malloc
tune_malloc()
first, second = torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, padding=1)
rates = []
for layer, x in ((first, torch.rand(400, 1, 28, 28)), (second, torch.rand(400, 64, 14, 14))):
    flops = 2 * 9 * layer.in_channels * layer.out_channels * x.shape[0] * x[0, 0].numel()
    with torch.no_grad():
        layer(x)
        started = time.perf_counter()
        for _ in range(20):
            layer(x)
    rates.append(flops * 20 / (time.perf_counter() - started) / 1e9)
print(*rates)
""",
    # resident memory before the first step and at its peak over two steps (MiB), VmHWM, as
    # getrusage's ru_maxrss keeps the parent's peak across exec; and the seconds of the second
    # step. "batched backward_per_task recomputed": with backward_per_task and
    # checkpoint_inner_steps
    "memory": """
import re, sys, time, torch
from metalearn.api import MetaLearner, TaskSampler
def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read())[1]) / 1024
backend, steps, shots = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
batch = TaskSampler("omniglot", n_way=5, k_shot=shots, query_size=15, seed=0).sample(32)
settings = {"backend": backend.split()[0]}
if "backward_per_task" in backend:
    settings["backward_per_task"] = True
if "recomputed" in backend:
    settings["checkpoint_inner_steps"] = True
learner = MetaLearner("maml", k_shot=shots, inner_steps=steps, **settings)
before = status("VmRSS")
learner.meta_train_step(batch)
started = time.perf_counter()
learner.meta_train_step(batch)
print(before, status("VmHWM"), time.perf_counter() - started)
""",
}


def probe(name: str, *args: str, **environment: str) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METALEARN_SYSTEM")}
    result = subprocess.run([sys.executable, "-c", PROBES[name], *args], check=True,
                            env={**env, **environment}, capture_output=True, text=True)
    return [float(value) for value in result.stdout.split()]


def allocator_rows(repeats: int) -> list[str]:
    """What a user gets: the plain loop in a process of its own with the system's malloc, against
    metalearn with its own settings, and metalearn under the system's malloc (the allocator's
    share), each step in a fresh process, alternating."""
    lines = ["| fresh process each | plain loop, system malloc | metalearn, system malloc | "
             "metalearn | plain / metalearn | the allocator's gain |", "|---|---|---|---|---|---|"]
    here = str(Path(__file__).parent)
    for algorithm, label in (("protonet", "ProtoNet 20-way 5-shot step (s)"),
                             ("maml", "MAML Conv4 5-way 1-shot step, 32 tasks (s)")):
        times = {"plain": [], "system": [], "metalearn": []}
        for _ in range(repeats):
            times["plain"] += probe("step", algorithm, "plain", here, METALEARN_SYSTEM_MALLOC="1")
            times["system"] += probe("step", algorithm, "metalearn", here,
                                     METALEARN_SYSTEM_MALLOC="1")
            times["metalearn"] += probe("step", algorithm, "metalearn", here)
        lines.append(f"| {label} | {seconds(times['plain'])} | {seconds(times['system'])} | "
                     f"{seconds(times['metalearn'])} | "
                     f"{ratio_cell(times['plain'], times['metalearn'])} | "
                     f"{ratio_cell(times['system'], times['metalearn'])} |")
    rates = {"system": [], "metalearn": []}
    for _ in range(repeats):
        rates["system"].append(probe("layers", METALEARN_SYSTEM_MALLOC="1"))
        rates["metalearn"].append(probe("layers"))
    for index, layer in enumerate(("first layer, 1 -> 64 channels", "second, 64 -> 64")):
        system, tuned = ([r[index] for r in rates[name]] for name in ("system", "metalearn"))
        lines.append(f"| Conv4 {layer}, forward (GFLOP/s) | | {statistics.median(system):.1f} | "
                     f"{statistics.median(tuned):.1f} | | {ratio_cell(tuned, system)} |")
    print(*lines[2:], sep="\n", flush=True)
    return lines


def memory_rows(quick: bool) -> list[str]:
    """Each contender in a fresh process: the batched backend, the per_task backend (learn2learn's
    task by task), and the batched backend recomputing the inner steps (checkpoint_inner_steps),
    taking each task's meta-gradient at once (backward_per_task), or both."""
    lines = ["| MAML second order, Conv4, 32 tasks, 15 queries | backend | RSS before (MiB) | "
             "peak RSS (MiB) | peak - before | step (s) |", "|---|---|---|---|---|---|"]
    for shots, steps in ((1, 1),) if quick else ((1, 1), (1, 5), (1, 10), (5, 10)):
        # the batched backend's peak is several times the others' (5-shot: beyond this machine)
        for backend in ("batched", "per_task", "batched recomputed", "batched backward_per_task",
                        "batched backward_per_task recomputed")[shots > 1:]:
            before, peak, seconds = probe("memory", backend, str(steps), str(shots))
            lines.append(f"| {shots}-shot, {steps} inner step{'s' * (steps > 1)} | {backend} | "
                         f"{before:,.0f} | {peak:,.0f} | {peak - before:,.0f} | {seconds:.2f} |")
            print(lines[-1], flush=True)
    return lines


# 5. Through train.py, and test episodes -----------------------------------------------------------
class StepTimer(L.Callback):
    """Times training batches after the first (warm-up) one: the step, the sampler and
    Lightning's own work between steps."""

    ends: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        StepTimer.ends.append(time.perf_counter())


def train_rows(steps: int, algorithms: tuple[str, ...]) -> list[str]:
    lines = ["| algorithm | tasks per step | tasks/s through train.py | sampler's share of a step |"
             " test s/episode |", "|---|---|---|---|---|"]
    for row in algorithms:
        algorithm, *overrides = row.split()
        with tempfile.TemporaryDirectory() as output_dir:
            cfg = compose_config([f"algorithm={algorithm}", *overrides, "num_epochs=1",
                                  f"trainer.max_steps={steps}", "episode.val_episodes=8",
                                  "episode.test_episodes=8", "logger=csv",
                                  "+callbacks.step_timer._target_=__main__.StepTimer"],
                                 output_dir)
            tasks = cfg.episode.meta_batch_size
            StepTimer.ends = []
            train(cfg)
            ends = StepTimer.ends
            step_seconds = (ends[-1] - ends[0]) / (len(ends) - 1)
            datamodule, module = build(cfg)
            loader = iter(datamodule.train_dataloader())
            next(loader)
            started = time.perf_counter()
            for _ in range(steps):
                next(loader)
            sampling = (time.perf_counter() - started) / steps
            test = next(iter(datamodule.test_dataloader()))
            with evaluating(module), torch.no_grad():
                score_episodes(module, test)  # warm-up
                started = time.perf_counter()
                score_episodes(module, test)
                per_episode = (time.perf_counter() - started) / test.batch_size
        lines.append(f"| {row} | {tasks} | {tasks / step_seconds:,.1f} | "
                     f"{sampling / step_seconds:.1%} | {per_episode:.3f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled column "
                        "(compiling takes minutes)")
    parser.add_argument("--quick", action="store_true", help="a few rows, to try the script")
    parser.add_argument("--only", choices=["maml", "protonet", "allocator", "memory", "train"],
                        nargs="+", help="run these sections and replace them in the results")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: experiments/results/bench.md (--quick: print only)")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    batch = TaskSampler("omniglot", n_way=5, k_shot=1, query_size=15, seed=0).sample(32)
    sections = {  # name: (title, what measures it)
        "maml": ("Meta-training steps: the MAML family against a plain learn2learn loop",
                 lambda: maml_rows(batch, repeats, not args.no_compile and not args.quick,
                                   args.quick)),
        "protonet": ("ProtoNet against a plain PyTorch step", lambda: protonet_rows(repeats)),
        "allocator": ("In fresh processes: the plain loops as a user runs them, and the allocator",
                      lambda: allocator_rows(2 if args.quick else 3)),
        "memory": ("Peak memory", lambda: memory_rows(args.quick)),
        "train": ("Every algorithm through train.py (Omniglot 5-way 1-shot, its default config)",
                  lambda: train_rows(4 if args.quick else 10,
                                     ALGORITHMS[:2] if args.quick else ALGORITHMS)),
    }
    measured = {name: (title, measure()) for name, (title, measure) in sections.items()
                if not args.only or name in args.only}
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
               f"torch {torch.__version__}, learn2learn {l2l.__version__}")
    text = [f"# Engine benchmark ({date.today().isoformat()})", "",
            f"Machine: {machine}. {tune_malloc()}.", "",
            "Ratios are the reference's time over metalearn's, min / median / max over "
            f"{repeats} alternating rounds (above 1: metalearn is faster). Reproduce: "
            "`make bench` or `python experiments/benchmark_engine.py`."]
    output = args.output or (None if args.quick else RESULTS)
    if args.only and output is not None and output.is_file():
        # the other sections as the file has them, each under its "## title"
        header, *kept = output.read_text().split("\n## ")
        previous = {part.split("\n", 1)[0]: part.split("\n", 1)[1].strip().splitlines()
                    for part in kept}
        text = header.rstrip().splitlines()  # the full run's date and machine
        threads = torch.get_num_threads()
        measured = {name: (title, [f"Measured {date.today().isoformat()} (`--only {name}`, "
                                   f"{threads} torch thread{'s' * (threads > 1)}).", "",
                                   *measured[name][1]]) if name in measured
                    else (title, previous.get(title, [])) for name, (title, _) in sections.items()}
    for title, lines in measured.values():
        text += ["", f"## {title}", "", *lines]
    if output is None:
        print("\n".join(text))
        return
    write_text(output, "\n".join(text) + "\n")
    print(f"Wrote {output}")


if __name__ == "__main__":
    tune_malloc()  # as the entry points do
    main()
