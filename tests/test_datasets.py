"""A user's own data: folders of class folders of images, and tables of feature vectors (for
classification and, grouped, for regression). Tiny generated files check the formats, splits,
cache and errors; real data checks that the same data through two doors gives the same results
and that meta-training learns."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn.data.episodes import TaskShape, seeded_generator
from metalearn.data.features import feature_table
from metalearn.data.image_folder import ImageFolder
from metalearn.data.omniglot import Omniglot
from metalearn.errors import UserError
from metalearn.run.build import build
from metalearn.run.training import train
from tests.budgets import BUDGETS
from tests.conftest import ROOT, make_config, mean_query_score
from tests.helpers import digits_frame, sinusoid_table


def write_class(folder: Path, label: int, count: int, size: int = 12, mode: str = "RGB",
                sizes_vary: bool = False) -> None:
    """`count` images whose first pixel is the class and second the example index (the rest
    random), of size x size pixels, or some taller with `sizes_vary`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(label)
    for index in range(count):
        height = size + index % 3 if sizes_vary else size
        shape = (height, size) if mode == "L" else (height, size, 3)
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        pixels[0, 0], pixels[0, 1] = label, index
        Image.fromarray(pixels).convert(mode).save(folder / f"{index:03d}.png")


def folder_of_classes(root: Path, counts: dict[str, int], mode: str = "RGB",
                      sizes_vary: bool = False) -> Path:
    for label, (name, count) in enumerate(counts.items()):
        write_class(root / name, label, count, mode=mode, sizes_vary=sizes_vary)
    return root


def identities(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, example) encoded in the first two pixels of the first channel."""
    pixels = (x[..., 0, 0, :2] * 255).round().long()
    return pixels[..., 0], pixels[..., 1]


# Image folders -----------------------------------------------------------------------------------
def test_train_val_test_folders_are_the_splits_and_images_keep_their_pixels(tmp_path):
    root = tmp_path / "root"
    folder_of_classes(root / "train", {"ant": 6, "bee": 7, "cat": 8})
    folder_of_classes(root / "val", {"dog": 6, "eel": 6})
    folder_of_classes(root / "test", {"fox": 9, "gnu": 6})
    data = ImageFolder(str(root), str(tmp_path / "data"), image_size=12, channels=3)
    assert {split: part.names for split, part in data.splits.items()} == {
        "train": ("ant", "bee", "cat"), "val": ("dog", "eel"), "test": ("fox", "gnu")}
    assert data.splits["train"].counts.tolist() == [6, 7, 8]
    assert data.input_shape == (3, 12, 12)
    # an image of the right size keeps its pixels exactly; others are resized
    written = np.asarray(Image.open(root / "train" / "bee" / "003.png").convert("RGB"))
    start = int(data.splits["train"].offsets[1])
    assert np.array_equal(data.splits["train"].examples[start + 3], written.transpose(2, 0, 1))


@pytest.mark.parametrize("channels", [1, 3])
def test_16_and_32_bit_images_are_scaled_by_their_range_not_clipped(tmp_path, channels):
    """A 16-bit grey PNG (Pillow's I;16, as scanners and medical imaging write them) and 32-bit
    integer and float TIFFs keep their contrast: values from the image's minimum to its maximum
    become 0..255 (Pillow's own conversion clipped every value above 255 to white)."""
    rng = np.random.default_rng(0)
    pixels = {"deep": rng.integers(300, 4096, (12, 12)).astype(np.uint16),
              "wide": rng.integers(-70_000, 90_000, (12, 12)).astype(np.int32),
              "real": rng.uniform(-2.0, 3.0, (12, 12)).astype(np.float32)}
    for split, names in (("train", ("deep", "wide", "real")), ("val", ("v1", "v2")),
                         ("test", ("t1", "t2"))):
        for name in names:
            folder = tmp_path / "root" / split / name
            folder.mkdir(parents=True)
            values = pixels.get(name, pixels["deep"])
            suffix = ".png" if values.dtype == np.uint16 else ".tif"
            for index in range(3):
                Image.fromarray(values).save(folder / f"{index}{suffix}")
    data = ImageFolder(str(tmp_path / "root"), str(tmp_path / "data"), image_size=12,
                       channels=channels)
    train = data.splits["train"]
    for index, name in enumerate(train.names):
        values = pixels[name].astype(np.float64)
        expected = np.rint((values - values.min()) * 255 / (values.max() - values.min()))
        got = np.asarray(train.examples[int(train.offsets[index])])
        assert got.shape == (channels, 12, 12)
        assert np.array_equal(got[0], expected.astype(np.uint8)), name
        assert got.max() == 255 and got.min() == 0


def test_grey_images_and_sizes(tmp_path):
    root = folder_of_classes(tmp_path / "root", {f"c{i}": 5 for i in range(10)}, mode="L",
                             sizes_vary=True)
    data = ImageFolder(str(root), str(tmp_path / "data"), image_size=8, channels=1)
    assert data.input_shape == (1, 8, 8)
    assert sum(part.num_classes for part in data.splits.values()) == 10


def test_episodes_of_classes_of_different_sizes_hold_distinct_examples_of_one_class(tmp_path):
    counts = {f"class{i:02d}": 4 + i for i in range(12)}
    root = tmp_path / "root"
    folder_of_classes(root / "train", counts)
    folder_of_classes(root / "val", {"v0": 5, "v1": 5})
    folder_of_classes(root / "test", {"t0": 5, "t1": 5})
    data = ImageFolder(str(root), str(tmp_path / "data"), image_size=12, augment=None)
    batch = data.sample("train", TaskShape(4, 2, 2), 200, seeded_generator(0))
    drawn = torch.zeros(12, 16, dtype=torch.long)
    for task in batch.tasks():
        x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
        classes, examples = identities(x)
        for label in range(4):
            assert classes[y == label].unique().numel() == 1
        assert (classes * 100 + examples).unique().numel() == len(y)
        assert (examples < torch.tensor(list(counts.values()))[classes]).all()
        drawn[classes, examples] += 1
    # every example of the largest class is drawn sometimes, none past the smallest's end
    assert (drawn[11, :15] > 0).all() and (drawn[0, 4:] == 0).all()


def test_split_file_and_split_fractions(tmp_path, caplog):
    root = folder_of_classes(tmp_path / "root", {f"c{i}": 4 for i in range(10)})
    split_file = tmp_path / "split.csv"
    split_file.write_text("class,split\nc0,train\nc1,train\nc2,train\nc3,val\nc4,test\n")
    with caplog.at_level(logging.WARNING):
        data = ImageFolder(str(root), str(tmp_path / "data"), image_size=8,
                           split_file=str(split_file))
    assert {s: p.names for s, p in data.splits.items()} == {
        "train": ("c0", "c1", "c2"), "val": ("c3",), "test": ("c4",)}
    assert "names no split for 5 class folders, left out: c5, c6, c7, c8, c9" in caplog.text

    def fractions(seed: int):
        data = ImageFolder(str(root), str(tmp_path / "data"), image_size=8,
                           split_fractions=[0.6, 0.2, 0.2], split_seed=seed)
        return {split: set(part.names) for split, part in data.splits.items()}

    first = fractions(0)
    assert [len(first[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert set.union(*first.values()) == {f"c{i}" for i in range(10)}  # disjoint, complete
    assert fractions(0) == first and fractions(1) != first


def test_the_cache_opens_without_decoding_and_is_rebuilt_when_files_change(tmp_path,
                                                                          monkeypatch):
    root = folder_of_classes(tmp_path / "root", {f"c{i}": 4 for i in range(6)})
    ImageFolder(str(root), str(tmp_path / "data"), image_size=8)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr("metalearn.data.image_cache.build_split", no_decoding)
    again = ImageFolder(str(root), str(tmp_path / "data"), image_size=8)
    assert isinstance(again.splits["train"].examples, np.memmap)  # mapped, not loaded
    monkeypatch.undo()

    write_class(root / "c2", 2, 6)  # two images more
    changed = ImageFolder(str(root), str(tmp_path / "data"), image_size=8)
    assert sum(int(part.counts.sum()) for part in changed.splits.values()) == 26
    # a build interrupted before its index was written is never read: rebuilt
    (index,) = (tmp_path / "data").glob("image_folder/*/*/index.json")
    index.unlink()
    rebuilt = ImageFolder(str(root), str(tmp_path / "data"), image_size=8)
    assert sum(int(part.counts.sum()) for part in rebuilt.splits.values()) == 26


def test_image_folder_mistakes_are_one_line(tmp_path, caplog):
    cases = []
    cases.append((lambda: ImageFolder(str(tmp_path / "nowhere"), str(tmp_path)),
                  f"dataset.root='{tmp_path / 'nowhere'}': no such folder"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    cases.append((lambda: ImageFolder(str(tmp_path / "empty"), str(tmp_path)),
                  f"dataset.root='{tmp_path / 'empty'}' holds no class folders of images"))
    root = folder_of_classes(tmp_path / "root", {f"c{i}": 4 for i in range(6)})
    bad_split = tmp_path / "bad.csv"
    bad_split.write_text("c0,train\nzebra,val\n")
    cases.append((lambda: ImageFolder(str(root), str(tmp_path), split_file=str(bad_split)),
                  f"dataset.split_file {bad_split}, line 2: class 'zebra' is not a class folder"))
    cases.append((lambda: ImageFolder(str(root), str(tmp_path), channels=2),
                  "dataset.channels=2 must be 1 (grey) or 3 (RGB)"))
    broken = folder_of_classes(tmp_path / "broken", {f"c{i}": 4 for i in range(6)})
    (broken / "c3" / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cases.append((lambda: ImageFolder(str(broken), str(tmp_path / "d2"), image_size=8),
                  f"cannot read {broken / 'c3' / '004.png'}: "))
    for make, message in cases:
        with pytest.raises(UserError) as caught:
            make()
        assert str(caught.value).startswith(message), (message, str(caught.value))
    # the broken build left no cache to trust
    assert not list((tmp_path / "d2").glob("image_folder/*/*/index.json"))


def test_a_class_too_small_for_the_task_is_named_and_min_examples_leaves_it_out(tmp_path,
                                                                               caplog):
    root = tmp_path / "root"
    folder_of_classes(root / "train", {"big": 9, "small": 3, "mid": 8})
    folder_of_classes(root / "val", {"v0": 9, "v1": 9})
    folder_of_classes(root / "test", {"t0": 9, "t1": 9})
    overrides = ["dataset=image_folder", f"dataset.root={root}", "dataset.image_size=16",
                 f"paths.data_dir={tmp_path / 'data'}", "episode.n_way=2", "episode.k_shot=1",
                 "episode.query_size=4", "episode.train_n_way=null",
                 "episode.train_query_size=null"]
    with pytest.raises(UserError) as caught:
        build(make_config(overrides, tmp_path))
    assert str(caught.value) == (
        "episode.k_shot + episode.query_size = 1 + 4 = 5 is more than the 3 examples of "
        "image_folder's class 'small', its smallest; use at most 3 together, or leave out the "
        "classes that small with dataset.min_examples")
    with caplog.at_level(logging.WARNING):
        datamodule, _ = build(make_config([*overrides, "dataset.min_examples=5"], tmp_path))
    assert datamodule.tasks.splits["train"].names == ("big", "mid")
    assert "dataset.min_examples=5 leaves out 1 train classes: small (3)" in caplog.text


@pytest.mark.slow
def test_omniglot_as_a_folder_of_images_is_the_built_in_omniglot(tmp_path):
    """The lake split exported as train/val/test folders of PNGs (class folders named so that
    their order is the built-in loader's): image_folder reads the same images, and ProtoNet
    trained on each with the same seed and budget scores the same."""
    omniglot = Omniglot(str(ROOT / "data"), split="lake", rotations=False)
    root = tmp_path / "omniglot_png"
    for split, part in omniglot.splits.items():
        for index in range(part.num_classes):
            folder = root / split / f"{index:04d}"
            folder.mkdir(parents=True)
            start, end = part.offsets[index].item(), part.offsets[index + 1].item()
            for number, image in enumerate(part.examples[start:end]):
                Image.fromarray(image[0].numpy()).save(folder / f"{number:02d}.png")
    folders = ImageFolder(str(root), str(tmp_path / "data"), image_size=28, channels=1)
    for split, part in omniglot.splits.items():
        assert torch.equal(torch.from_numpy(np.asarray(folders.splits[split].examples)),
                           part.examples), split
        assert torch.equal(folders.splits[split].offsets, part.offsets)

    budget = ["algorithm=protonet", "episode.num_tasks=100", "num_epochs=1",
              "episode.val_episodes=20", "episode.test_episodes=100",
              "backbone.hidden_channels=16", "seed=2"]
    built_in = train(make_config([*budget, "dataset.split=lake", "dataset.rotations=false"],
                                 tmp_path / "built_in"))
    from_folder = train(make_config([*budget, "dataset=image_folder", f"dataset.root={root}",
                                     "dataset.image_size=28", "dataset.channels=1",
                                     "dataset.augment=null",  # as Omniglot's default
                                     f"paths.data_dir={tmp_path / 'data'}"],
                                    tmp_path / "folder"))
    # the same episodes of the same pixels: the same numbers, not merely within the interval
    assert from_folder["test_acc"] == pytest.approx(built_in["test_acc"], abs=1e-6)
    assert from_folder["best_val_acc"] == pytest.approx(built_in["best_val_acc"], abs=1e-6)


# Feature tables ----------------------------------------------------------------------------------
def test_csv_parquet_and_npz_tables_give_the_same_tasks(tmp_path):
    frame = digits_frame()
    frame.to_csv(tmp_path / "digits.csv", index=False)
    frame.to_parquet(tmp_path / "digits.parquet")
    np.savez(tmp_path / "digits.npz", x=frame.iloc[:, :64].to_numpy(np.float32),
             label=frame["label"].to_numpy())
    tables = [feature_table(str(tmp_path / name), standardize=True)
              for name in ("digits.csv", "digits.parquet", "digits.npz")]
    for table in tables[1:]:
        for split in ("train", "val", "test"):
            assert table.splits[split].names == tables[0].splits[split].names
            assert torch.allclose(table.splits[split].examples, tables[0].splits[split].examples)
    train_features = tables[0].splits["train"].examples
    assert torch.allclose(train_features.mean(0)[train_features.std(0) > 0], torch.zeros(1),
                          atol=1e-5)  # standardised by the meta-train rows
    batch = tables[0].sample("test", TaskShape(2, 3, 4), 5, seeded_generator(0))
    assert batch.support_x.shape == (5, 6, 64) and batch.query_y.shape == (5, 8)


def test_a_split_column_assigns_labels(tmp_path):
    frame = digits_frame()
    frame["part"] = np.where(frame["label"] < 6, "train", np.where(frame["label"] < 8, "val",
                                                                    "test"))
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = feature_table(str(tmp_path / "t.csv"), split_column="part")
    assert {s: p.names for s, p in table.splits.items()} == {
        "train": ("0", "1", "2", "3", "4", "5"), "val": ("6", "7"), "test": ("8", "9")}
    assert table.input_shape == (64,)  # the split column is not a feature


def test_table_mistakes_are_one_line(tmp_path):
    frame = digits_frame()
    frame.to_csv(tmp_path / "t.csv", index=False)
    named = frame.astype({"pixel5": object})  # a number column with a cell of text
    named.loc[7, "pixel5"] = "x"
    named.to_csv(tmp_path / "named.csv", index=False)
    mixed = frame.assign(part=["train"] * 5 + ["test"] * (len(frame) - 5))
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    (tmp_path / "ragged.csv").write_text("a,b,label\n1,2,0\n3,4,5,1\n")
    (tmp_path / "t.xlsx").write_text("")
    cases = [
        (lambda: feature_table(str(tmp_path / "t.csv"), label_column="intent"),
         "dataset.label_column='intent' is not a column of the table; its columns are: pixel0, "),
        (lambda: feature_table(str(tmp_path / "named.csv")), "feature column 'pixel5' is not "
                                                              "numeric (e.g. 'x')"),
        (lambda: feature_table(str(tmp_path / "ragged.csv")),
         f"dataset.path='{tmp_path / 'ragged.csv'}' cannot be read as a table: Error tokenizing "
         "data. C error: Expected 3 fields in line 3, saw 4"),
        (lambda: feature_table(str(tmp_path / "mixed.csv"), split_column="part"),
         "the rows of label 0 are in several splits (test, train)"),
        (lambda: feature_table(str(tmp_path / "t.xlsx")), "dataset.path="),
        (lambda: feature_table(str(tmp_path / "none.csv")), "dataset.path="),
        (lambda: feature_table(str(tmp_path / "t.csv"), task_column="label"),
         "regression tasks need both dataset.task_column and dataset.target_column"),
    ]
    for make, message in cases:
        with pytest.raises(UserError) as caught:
            make()
        assert str(caught.value).startswith(message), (message, str(caught.value))


def test_groups_of_rows_are_regression_tasks_split_by_group(tmp_path):
    table = feature_table(str(sinusoid_table(tmp_path / "sin.csv", functions=50)),
                          task_column="function", target_column="y")
    assert table.task_type == "regression" and table.input_shape == (1,)
    groups = {split: set(table.rows(split).names) for split in ("train", "val", "test")}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"]
                or groups["val"] & groups["test"])
    batch = table.sample("val", TaskShape(1, 5, 15), 8, seeded_generator(3))
    assert batch.support_x.shape == (8, 5, 1) and batch.query_y.shape == (8, 15, 1)
    # every task is one function: its 20 rows, none twice
    x = torch.cat([batch.support_x, batch.query_x], dim=1).squeeze(-1)
    assert all(row.unique().numel() == 20 for row in x)


@pytest.mark.slow
def test_digits_meta_train_from_a_table(tmp_path):
    """scikit-learn's handwritten digits (real data that ships in the package) as a table of
    8x8 pixel features: ProtoNet meta-trains to the score measured for its budget."""
    budget = BUDGETS["protonet (digits table)"]
    budget.prepare()
    record = train(make_config(budget.overrides, tmp_path))
    budget.check(record)


@pytest.mark.slow
def test_the_sinusoid_as_a_table_meta_trains_maml_as_the_sinusoid_does(tmp_path):
    budget = BUDGETS["maml (sinusoid table)"]
    budget.prepare()
    cfg = make_config(budget.overrides, tmp_path / "run")
    record = train(cfg)
    budget.check(record)
    # far below a random initialisation adapted alike on the same test tasks
    torch.manual_seed(12345)
    datamodule, random_init = build(cfg)
    random_mse = mean_query_score(random_init, datamodule.test_dataloader())
    # the record's MSE is in the target's units; random_mse in the standardised ones
    test_mse = record["test_mse"] / datamodule.tasks.target_scale ** 2
    assert test_mse < random_mse / 2, (test_mse, random_mse)


@pytest.fixture(scope="module")
def omniglot_model(tmp_path_factory) -> Path:
    """A ProtoNet checkpoint meta-trained for a few steps on Omniglot (1 x 28 x 28)."""
    run = tmp_path_factory.mktemp("omniglot_run")
    train(make_config(["dataset.split=lake", "dataset.rotations=false", "episode.num_tasks=4",
                       "num_epochs=1", "episode.val_episodes=4", "episode.test_episodes=4",
                       "backbone.hidden_channels=8"], run))
    return run / "checkpoints" / "last.ckpt"


def colour_folder(root: Path) -> Path:
    for split, names in (("train", "abc"), ("val", "dez"), ("test", "fgh")):
        folder_of_classes(root / split, {name: 4 for name in names})
    return root


def evaluate_on_folder(checkpoint: Path, tmp_path: Path, *extra: str) -> dict:
    from metalearn.run.evaluate import evaluate

    overrides = [f"ckpt_path={checkpoint}", "dataset=image_folder",
                 f"dataset.root={colour_folder(tmp_path / 'colour')}",
                 f"paths.data_dir={tmp_path / 'data'}", "episode.n_way=3",
                 "episode.query_size=2", "episode.test_episodes=10", *extra]
    return evaluate(make_config(overrides, tmp_path / "eval", config_name="eval"), overrides)


def test_eval_on_another_dataset_resizes_to_the_trained_input_and_names_both(omniglot_model,
                                                                            tmp_path):
    """Cross-domain evaluation: a model meta-trained on Omniglot tested on a folder of RGB
    images of another size, converted and resized to its input."""
    record = evaluate_on_folder(omniglot_model, tmp_path)
    assert (record["dataset"], record["trained_on"]) == ("image_folder", "omniglot")
    assert record["test_episodes"] == 10
    cache = next((tmp_path / "data").glob("image_folder/*/*"))
    assert cache.name == "28px_1ch"  # the folder's images at the model's input shape


def test_test_time_augmentation_averages_over_views_of_each_episode(omniglot_model, tmp_path):
    plain = evaluate_on_folder(omniglot_model, tmp_path)
    # views that change nothing leave every prediction as it was
    unchanged = evaluate_on_folder(omniglot_model, tmp_path, "eval.tta=3",
                                   "+dataset/augment=natural",
                                   "dataset.augment.crop_scale=null", "dataset.augment.flip=0",
                                   "dataset.augment.brightness=0", "dataset.augment.contrast=0",
                                   "dataset.augment.saturation=0")
    assert unchanged["test_time_views"] == 3
    assert unchanged["test_acc"] == pytest.approx(plain["test_acc"], abs=1e-9)
    augmented = evaluate_on_folder(omniglot_model, tmp_path, "eval.tta=3")
    again = evaluate_on_folder(omniglot_model, tmp_path, "eval.tta=3")
    assert augmented["test_acc"] == again["test_acc"]  # the views are seeded
    with pytest.raises(UserError, match="eval.tta=3 averages over views made by the dataset's"):
        evaluate_on_folder(omniglot_model, tmp_path, "eval.tta=3", "dataset.augment=null")
    # grey images: augment=auto chooses none, which only the built dataset knows
    grey = tmp_path / "grey"
    for split, names in (("train", "abc"), ("val", "dez"), ("test", "fgh")):
        folder_of_classes(grey / split, {name: 4 for name in names}, mode="L")
    with pytest.raises(UserError, match="eval.tta=3 averages .* chosen null for these images"):
        evaluate_on_folder(omniglot_model, tmp_path, "eval.tta=3", f"dataset.root={grey}")


def test_meta_training_episodes_are_augmented_and_test_episodes_are_not(tmp_path):
    root = colour_folder(tmp_path / "root")
    cfg = make_config(["dataset=image_folder", f"dataset.root={root}", "dataset.image_size=12",
                       f"paths.data_dir={tmp_path / 'data'}", "episode.n_way=3",
                       "episode.query_size=2", "episode.train_n_way=null",
                       "episode.train_query_size=null", "dataset.normalize=null",
                       "backbone.num_blocks=2"], tmp_path)
    datamodule, _ = build(cfg)
    tasks = datamodule.tasks
    plain = ImageFolder(str(root), str(tmp_path / "data"), image_size=12, augment=None)
    shape = TaskShape(3, 1, 2)
    for split, changed in (("train", True), ("test", False)):
        a = tasks.sample(split, shape, 4, seeded_generator(0))
        b = plain.sample(split, shape, 4, seeded_generator(0))
        assert torch.equal(a.support_y, b.support_y)  # the same episodes ...
        assert torch.equal(a.support_x, b.support_x) is not changed  # ... augmented in training
