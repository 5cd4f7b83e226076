"""The image data path, measured side by side in one process on a generated folder of JPEGs of
mini-ImageNet's size (100 classes x 600 images of 84 x 84 RGB by default):

1. building metalearn's memory-mapped cache (dataset=image_folder) against reading the same
   files with torchvision's ImageFolder and a DataLoader, with the same number of workers:
   images per second;
2. sampling 5-way 5-shot 15-query episodes from the cache: its share of a Conv4 ProtoNet
   meta-training step, and episodes per second against learn2learn's TaskDataset on the same
   images (decoded, in memory).

Each contender runs `--repeats` times, alternating with the other; the table gives min / median /
max and the ratio of the medians. The machine is noisy: read ratios, not seconds.
    python experiments/benchmark_data.py [--classes 100] [--per-class 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metalearn.algorithms.protonet import ProtoNet
from metalearn.data.episodes import TaskShape, seeded_generator
from metalearn.data.image_folder import ImageFolder
from metalearn.models.backbones import Conv4

SHAPE = TaskShape(5, 5, 15)


def write_folder(root: Path, classes: int, per_class: int, size: int) -> None:
    """JPEGs of random coloured blocks, `per_class` in each of `classes` folders."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        for i in range(per_class):
            pixels = np.kron(base, np.ones((size // 8 + 1, size // 8 + 1, 1), np.uint8))[:size, :size]
            noise = rng.integers(0, 40, pixels.shape, dtype=np.uint8)
            Image.fromarray(pixels + noise).save(folder / f"{i:04d}.jpg", quality=90)


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def summary(times: list[float], count: int) -> tuple[str, float]:
    """'min / median / max' of count / time, and the median rate."""
    rates = sorted(count / t for t in times)
    return (f"{rates[0]:,.0f} / {statistics.median(rates):,.0f} / {rates[-1]:,.0f}",
            statistics.median(rates))


def torchvision_read(root: Path, size: int, workers: int) -> int:
    from torchvision.datasets import ImageFolder as TorchvisionFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True)])
    loader = torch.utils.data.DataLoader(TorchvisionFolder(str(root), transform=transform),
                                         batch_size=256, num_workers=workers)
    return sum(len(images) for images, _ in loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=600)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="metalearn_bench_"))
    try:
        root = work / "images"
        started = time.perf_counter()
        write_folder(root, args.classes, args.per_class, args.size)
        count = args.classes * args.per_class
        print(f"wrote {count:,} JPEGs in {time.perf_counter() - started:.0f} s", file=sys.stderr)

        ours, theirs = [], []
        for repeat in range(args.repeats):  # alternating, each of ours from an empty cache
            data_dir = work / f"data_{repeat}"
            ours.append(timed(lambda: ImageFolder(str(root), str(data_dir), image_size=args.size,
                                                  split_fractions=[0.64, 0.16, 0.20])))
            theirs.append(timed(lambda: torchvision_read(root, args.size, args.workers)))
        cache_row, cache_rate = summary(ours, count)
        read_row, read_rate = summary(theirs, count)

        data = ImageFolder(str(root), str(work / "data_0"), image_size=args.size)
        episodes = 200
        sampling, l2l_sampling, steps = [], [], []
        l2l_tasks = learn2learn_tasks(data)
        model = ProtoNet(Conv4((3, args.size, args.size)))
        optimizer = torch.optim.Adam(model.parameters())
        batch = data.sample("train", SHAPE, 1, seeded_generator(0))

        def step() -> None:
            loss, _ = model.meta_train_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        for repeat in range(args.repeats):
            sampling.append(timed(lambda: [data.sample("train", SHAPE, 1, seeded_generator(i))
                                           for i in range(episodes)]))
            l2l_sampling.append(timed(lambda: [l2l_tasks.sample() for _ in range(episodes)]))
            steps.append(timed(lambda: [step() for _ in range(5)]))
        sample_row, sample_rate = summary(sampling, episodes)
        l2l_row, l2l_rate = summary(l2l_sampling, episodes)
        share = (1 / sample_rate) / (statistics.median(steps) / 5)
        print(f"| image data ({args.classes} classes x {args.per_class} JPEGs of {args.size} px, "
              f"{args.workers} workers) | min / median / max | ratio |")
        print("|---|---|---|")
        print(f"| metalearn cache build, images/s | {cache_row} | {cache_rate / read_rate:.2f}x |")
        print(f"| torchvision ImageFolder + DataLoader read, images/s | {read_row} | 1 |")
        print(f"| metalearn 5-way 5-shot 15-query episodes/s | {sample_row} | "
              f"{sample_rate / l2l_rate:.1f}x |")
        print(f"| learn2learn TaskDataset episodes/s (same images, in memory) | {l2l_row} | 1 |")
        print(f"| sampling's share of a Conv4 ProtoNet step (median) | {100 * share:.2f}% | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def learn2learn_tasks(data: ImageFolder):
    """learn2learn's TaskDataset over the meta-train split's images (decoded, in memory) with
    the usual transforms: N ways, K + Q shots, data loaded, labels remapped."""
    import learn2learn as l2l

    split = data.splits["train"]
    images = torch.from_numpy(np.asarray(split.examples)).float().div_(255)
    labels = torch.repeat_interleave(torch.arange(split.num_classes), split.counts)
    dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(images, labels))
    transforms = [l2l.data.transforms.NWays(dataset, SHAPE.n_way),
                  l2l.data.transforms.KShots(dataset, SHAPE.k_shot + SHAPE.query_size),
                  l2l.data.transforms.LoadData(dataset),
                  l2l.data.transforms.RemapLabels(dataset)]
    return l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=-1)


if __name__ == "__main__":
    main()
