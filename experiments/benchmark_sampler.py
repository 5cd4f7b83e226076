"""Episode sampling throughput: the vectorised sampler against a per-example Python loop.

Both draw the same kind of Omniglot tasks from the same class-indexed tensor in one process, side
by side, so the ratio is meaningful on a noisy machine.
    python experiments/benchmark_sampler.py [--tasks 3200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from metalearn.data.episodes import TaskShape, sample_classification_episodes, seeded_generator
from metalearn.data.omniglot import Omniglot
from metalearn.paths import project_root


def per_example_loop(split, shape, batch_size, generator):
    """The straightforward sampler: one Python iteration per task, class and example."""
    n_way, k_shot, query_size = shape
    images_by_class = split.examples.view(split.num_classes, -1, *split.example_shape)
    tasks = []
    for _ in range(batch_size):
        classes = torch.randperm(images_by_class.shape[0], generator=generator)[:n_way]
        support, query = [], []
        for label, c in enumerate(classes.tolist()):
            order = torch.randperm(images_by_class.shape[1], generator=generator)
            for i, e in enumerate(order[: k_shot + query_size].tolist()):
                example = (images_by_class[c, e].float() / 255, label)
                (support if i < k_shot else query).append(example)
        tasks.append((torch.stack([x for x, _ in support]), torch.tensor([y for _, y in support]),
                      torch.stack([x for x, _ in query]), torch.tensor([y for _, y in query])))
    return tasks


def tasks_per_second(sampler, images, num_tasks, batch, repeats) -> float:
    best = float("inf")
    for repeat in range(repeats):
        started = time.perf_counter()
        for i in range(num_tasks // batch):
            sampler(images, TaskShape(5, 1, 15), batch, seeded_generator(repeat, i))
        best = min(best, time.perf_counter() - started)
    return num_tasks / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    omniglot = Omniglot(f"{project_root()}/data", split="lake", rotations=False)
    images = omniglot.splits["train"]
    vectorised = tasks_per_second(sample_classification_episodes, images, args.tasks, args.batch,
                                  args.repeats)
    looped = tasks_per_second(per_example_loop, images, args.tasks, args.batch, args.repeats)
    print("| sampler (Omniglot 5-way 1-shot, 15 queries) | tasks/s |")
    print("|---|---|")
    print(f"| vectorised (metalearn) | {vectorised:,.0f} |")
    print(f"| per-example loop | {looped:,.0f} |")
    print(f"| ratio | {vectorised / looped:.1f}x |")


if __name__ == "__main__":
    main()
