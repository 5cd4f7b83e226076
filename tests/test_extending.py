"""The worked examples of docs/extending.md run as written: every code block is copied to the
file its first comment names, and each example's `train.py` command is run through
`metalearn.run.training.train` on a small budget (Hydra finding the copied configs through
`hydra.searchpath`)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

from metalearn.data.task_family import EpisodeSettings
from metalearn.errors import UserError
from metalearn.run.build import build
from metalearn.run.compose import compose_config
from metalearn.run.training import train

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PACKAGE = "my_metalearn"
#: a few steps of training and a few episodes of evaluation
BUDGET = ["seed=0", "num_epochs=1", "episode.num_tasks=40", "episode.val_episodes=4",
          "episode.test_episodes=20", "trainer.deterministic=true"]
#: meta-test accuracy of the nearest-neighbour method on 5-way 1-shot blobs after BUDGET: 0.965
#: measured (chance is 0.2); an untrained MLP is already good at well-separated blobs
NEAREST_NEIGHBOUR_FLOOR = 0.8


def sections() -> dict[str, list[tuple[str, str]]]:
    """Each `## ` heading of the page -> its code blocks, (language, text)."""
    parts = re.split(r"^## (.+)$", PAGE.read_text(), flags=re.MULTILINE)
    return {title: BLOCK.findall(body) for title, body in zip(parts[1::2], parts[2::2])}


def train_command(title: str, folder: Path) -> list[str]:
    """The overrides of the section's `python train.py ...` command, its config folder the copy."""
    (command,) = [text for language, text in sections()[title] if language == "bash"]
    words = shlex.split(command)
    assert words[:2] == ["python", "train.py"]
    return [word.replace("file://my_configs", f"file://{folder / 'my_configs'}")
            for word in words[2:]]


@pytest.fixture(scope="module")
def copied(tmp_path_factory) -> Path:
    """A folder holding the page's files, importable, as its layout shows."""
    folder = tmp_path_factory.mktemp("extending")
    (folder / PACKAGE).mkdir()
    (folder / PACKAGE / "__init__.py").write_text("")
    for blocks in sections().values():
        for language, text in blocks:
            if language in ("python", "yaml"):
                name = next(line for line in text.splitlines()
                            if not line.startswith("# @")).removeprefix("# ")
                assert name.startswith((f"{PACKAGE}/", "my_configs/")), name
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text(text)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    for module in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
        del sys.modules[module]


def test_the_page_has_the_three_examples_each_with_its_files_and_command():
    found = sections()
    for title in ("Adding an algorithm", "Adding a data source", "Adding an evaluation metric"):
        languages = [language for language, _ in found[title]]
        assert languages.count("python") == languages.count("yaml") == 1, title
        assert languages.count("bash") == 1, title


def test_the_blobs_are_tasks_of_the_declared_shape_drawn_from_the_generator_alone(copied):
    from my_metalearn.blobs import GaussianBlobs

    blobs = GaussianBlobs(dim=3)
    shape = (4, 2, 5)

    def draw(seed: int):
        return blobs.sample("train", shape, 6, torch.Generator().manual_seed(seed))

    batch = draw(0)
    assert batch.support_x.shape == (6, 8, 3) and batch.query_x.shape == (6, 20, 3)
    assert batch.support_y.shape == (6, 8) and batch.query_y.shape == (6, 20)
    for labels, per_class in ((batch.support_y, 2), (batch.query_y, 5)):
        assert (torch.stack([labels.eq(c).sum(1) for c in range(4)]) == per_class).all()
    assert all(torch.equal(a, b) for a, b in zip(batch[:4], draw(0)[:4]))
    assert not torch.equal(batch.support_x, draw(1).support_x)
    with pytest.raises(UserError, match=r"^episode.n_way=1: a task of blobs needs at least 2"):
        blobs.check_fits(EpisodeSettings(n_way=1, k_shot=1, query_size=1), "blobs")


def test_the_runner_checks_the_new_data_source_before_building(copied, tmp_path):
    overrides = train_command("Adding a data source", copied)
    cfg = compose_config([*overrides, "episode.n_way=1"], tmp_path)
    with pytest.raises(UserError, match=r"^episode.n_way=1: a task of blobs needs"):
        build(cfg)
    cfg = compose_config([*overrides, "algorithm=baseline"], tmp_path)
    with pytest.raises(UserError, match=r"^GaussianBlobs \(classification tasks\) has no "
                                        r"labelled examples to pre-train on"):
        build(cfg)


@pytest.mark.slow
def test_the_new_algorithm_learns_the_new_data_source(copied, tmp_path):
    record = train(compose_config([*train_command("Adding an algorithm", copied), *BUDGET],
                                  tmp_path))
    assert record["train_steps"] == 40
    assert record["test_acc"] > NEAREST_NEIGHBOUR_FLOOR


@pytest.mark.slow
def test_the_new_metric_is_reported_beside_the_accuracy(copied, tmp_path):
    record = train(compose_config([*train_command("Adding an evaluation metric", copied),
                                   *BUDGET], tmp_path))
    assert record["test_acc"] <= record["test_top2_acc"] <= 1
    assert record["test_top2_acc"] > record["test_acc"] or record["test_acc"] == 1
