"""Episode sampling: shapes, labels, split hygiene and seeding."""

from __future__ import annotations

import pytest
import torch

from metalearn.data.datamodule import EpisodicDataModule
from metalearn.data.episodes import ClassExamples, TaskShape, seeded_generator
from metalearn.data.omniglot import Omniglot
from metalearn.data.task_family import ClassificationTaskFamily
from tests.conftest import ROOT

DATA_DIR = str(ROOT / "data")


def labelled_family(classes: int = 12, examples: int = 20) -> ClassificationTaskFamily:
    """Images whose pixels spell their class and example index, so episodes can be audited."""
    images = torch.zeros(classes, examples, 1, 2, 2, dtype=torch.uint8)
    images[:, :, 0, 0, 0] = torch.arange(classes).view(-1, 1)
    images[:, :, 0, 0, 1] = torch.arange(examples).view(1, -1)
    split = ClassExamples.dense(images, [f"class {c}" for c in range(classes)])
    return ClassificationTaskFamily({"train": split, "val": split, "test": split})


def identities(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = (x[..., 0, 0, :2] * 255).round().long()
    return pixels[..., 0], pixels[..., 1]  # class, example


def test_episode_shapes_and_labels():
    n, k, q, b = 5, 3, 4, 6
    episode = labelled_family().sample("train", TaskShape(n, k, q), b, seeded_generator(0))
    assert episode.support_x.shape == (b, n * k, 1, 2, 2)
    assert episode.query_x.shape == (b, n * q, 1, 2, 2)
    assert episode.support_x.dtype == torch.float32
    assert 0 <= episode.support_x.min() and episode.support_x.max() <= 1
    for y, per_class in ((episode.support_y, k), (episode.query_y, q)):
        assert y.dtype == torch.long
        counts = torch.stack([torch.bincount(row, minlength=n) for row in y])
        assert (counts == per_class).all()


def test_each_label_is_one_class_and_no_example_is_reused():
    episode = labelled_family().sample("train", TaskShape(5, 2, 3), 20, seeded_generator(1))
    for t in range(20):
        task = episode.task(t)
        s_class, s_example = identities(task.support_x)
        q_class, q_example = identities(task.query_x)
        classes = torch.cat([s_class, q_class])
        labels = torch.cat([task.support_y, task.query_y])
        for label in range(5):
            assert classes[labels == label].unique().numel() == 1
        assert classes.unique().numel() == 5
        drawn = classes * 100 + torch.cat([s_example, q_example])
        assert drawn.unique().numel() == drawn.numel()


def test_label_assignment_and_order_are_random():
    episode = labelled_family().sample("train", TaskShape(5, 1, 1), 50, seeded_generator(2))
    s_class, _ = identities(episode.support_x)
    class_of_label_0 = torch.stack([s_class[t][episode.support_y[t] == 0] for t in range(50)])
    assert class_of_label_0.unique().numel() > 5
    assert not (episode.support_y == torch.arange(5)).all(1).all()


@pytest.mark.parametrize("split,rotations,sizes", [
    ("lake", False, None),
    ("vinyals", False, (1100, 100, 423)),
    ("vinyals", True, (4400, 400, 1692)),
])
def test_omniglot_splits_are_disjoint(split, rotations, sizes):
    omniglot = Omniglot(DATA_DIR, split=split, rotations=rotations)
    ids = {name: set(value.tolist()) for name, value in omniglot.class_ids.items()}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert len(ids["train"] | ids["val"] | ids["test"]) == 1623
    counts = tuple(omniglot.num_classes(name) for name in ("train", "val", "test"))
    if sizes:
        assert counts == sizes
    if split == "lake":
        assert counts[0] + counts[1] == 964 and counts[2] == 659
    assert omniglot.smallest_class()[1] == 20 and int(omniglot.splits["val"].counts.max()) == 20
    assert omniglot.input_shape == (1, 28, 28)


def test_lake_split_holds_out_whole_alphabets():
    omniglot = Omniglot(DATA_DIR, split="lake", rotations=False)
    data = torch.load(ROOT / "data" / "omniglot" / "omniglot_28px.pt")
    alphabets = {name: {data["alphabets"][i] for i in omniglot.class_ids[name].tolist()}
                 for name in ("train", "val", "test")}
    assert len(alphabets["val"]) == 5 and len(alphabets["train"]) == 25
    assert len(alphabets["test"]) == 20
    assert not alphabets["train"] & alphabets["val"]


def test_rotated_classes_are_rotations():
    plain = Omniglot(DATA_DIR, split="vinyals", rotations=False)
    rotated = Omniglot(DATA_DIR, split="vinyals", rotations=True)
    first = plain.splits["test"].examples[:20]  # class 0's 20 drawings
    n = plain.num_classes("test")
    for k in range(4):
        start = int(rotated.splits["test"].offsets[k * n])
        assert torch.equal(rotated.splits["test"].examples[start:start + 20],
                           first.rot90(k, dims=(-2, -1)))


def datamodule(**kwargs) -> EpisodicDataModule:
    args = dict(n_way=5, k_shot=1, query_size=2, meta_batch_size=3, num_tasks=9,
                val_episodes=6, test_episodes=6, seed=0)
    return EpisodicDataModule(labelled_family(), **(args | kwargs))


def first_batch(loader):
    return next(iter(loader))


def test_same_seed_same_episodes_other_seed_different():
    a = first_batch(datamodule(seed=1).train_dataloader())
    b = first_batch(datamodule(seed=1).train_dataloader())
    c = first_batch(datamodule(seed=2).train_dataloader())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.support_x, c.support_x)


def test_every_epoch_meets_fresh_tasks():
    loader = datamodule().train_dataloader()
    epoch0 = first_batch(loader)
    loader.sampler.set_epoch(1)
    epoch1 = first_batch(loader)
    assert not torch.equal(epoch0.support_x, epoch1.support_x)
    assert len(loader) == 3  # num_tasks / meta_batch_size steps


def test_test_episodes_are_fixed_by_eval_seed_alone():
    def all_episodes(dm):
        batches = list(dm.test_dataloader())
        return torch.cat([b.query_x for b in batches])

    reference = all_episodes(datamodule(seed=1, eval_batch_size=4))
    assert reference.shape[0] == 6
    assert torch.equal(reference, all_episodes(datamodule(seed=2, eval_batch_size=1)))
    assert not torch.equal(reference, all_episodes(datamodule(eval_seed=5)))
    assert not torch.equal(reference, torch.cat([b.query_x for b in datamodule().val_dataloader()]))


def test_training_tasks_may_have_their_own_way_and_query_size():
    dm = datamodule(train_n_way=8, train_query_size=3)
    train = first_batch(dm.train_dataloader())
    test = first_batch(dm.test_dataloader())
    assert train.support_y.shape == (3, 8) and train.query_y.shape == (3, 24)
    assert test.support_y.shape == (6, 5) and test.query_y.shape == (6, 10)  # 6 test episodes
