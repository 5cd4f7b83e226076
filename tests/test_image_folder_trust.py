"""The image folder reads every layout as the user meant it, or says in one line why not, and
chooses the settings left auto from what the images are (grey or colour, their sizes)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from metalearn.data.augment import Augment
from metalearn.data.image_folder import ImageFolder, auto_image_size
from metalearn.errors import UserError
from metalearn.run.build import build
from tests.conftest import make_config


def write_images(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (12, 12),
                 mode: str = "RGB", suffix: str = ".png") -> Path:
    """`count` random images (colour in RGB mode) of `size` (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / f"{index:03d}{suffix}")
    return folder


def write_drawings(folder: Path, count: int, seed: int = 0) -> Path:
    """Grey strokes on white saved as RGB JPEGs of sizes 80-120 px, as scans are brought."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = rng.integers(80, 121, 2)
        pixels = np.full((height, width), 255, np.uint8)
        row = rng.integers(10, height - 10)
        pixels[row:row + 4, 10:width - 10] = rng.integers(0, 100)
        Image.fromarray(pixels).convert("RGB").save(folder / f"{index:03d}.jpg", quality=90)
    return folder


def flat_folder(root: Path, classes: int = 6, count: int = 4) -> Path:
    for label in range(classes):
        write_images(root / f"c{label}", count, seed=label)
    return root


def load(root: Path, data_dir: Path, **settings) -> ImageFolder:
    settings = {"image_size": 8, "channels": 3, "augment": None, **settings}
    return ImageFolder(str(root), str(data_dir), **settings)


def names(data: ImageFolder) -> dict[str, tuple[str, ...]]:
    return {split: part.names for split, part in data.splits.items()}


def one_line_error(make) -> str:
    with pytest.raises(UserError) as caught:
        make()
    assert "\n" not in str(caught.value)
    return str(caught.value)


# Layouts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("present,missing", [(("train", "val"), "test"),
                                             (("train",), "val/ or test")])
def test_split_folders_missing_a_split_is_one_line_naming_it_and_the_two_fixes(
        tmp_path, present, missing):
    for split in present:
        flat_folder(tmp_path / "root" / split, classes=3)
    message = one_line_error(lambda: load(tmp_path / "root", tmp_path / "data"))
    shown = " and ".join(f"{split}/" for split in present)
    assert f"has the split folder{'s' * (len(present) > 1)} {shown} but no {missing}/; add" in (
        message)
    assert "or put every class folder directly in dataset.root" in message


def test_a_folder_named_train_holding_only_images_is_a_class(tmp_path):
    root = flat_folder(tmp_path / "root")
    write_images(root / "train", 4)
    assert "train" in sum(names(load(root, tmp_path / "data")).values(), ())


def test_a_split_file_beside_split_folders_is_an_error(tmp_path):
    for split in ("train", "val", "test"):
        flat_folder(tmp_path / "root" / split, classes=2)
    (tmp_path / "split.csv").write_text("c0,train\n")
    message = one_line_error(lambda: load(tmp_path / "root", tmp_path / "data",
                                          split_file=str(tmp_path / "split.csv")))
    assert "has train/, val/ and test/ folders, which are its splits" in message


def test_a_link_back_to_the_root_or_above_is_never_followed_and_is_named(tmp_path, caplog):
    root = flat_folder(tmp_path / "root")
    (root / "all").symlink_to(root, target_is_directory=True)
    (root / "up").symlink_to(tmp_path, target_is_directory=True)
    (root / "c1" / "loop").symlink_to(root / "c1", target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        data = load(root, tmp_path / "data")
    assert sorted(sum(names(data).values(), ())) == [f"c{i}" for i in range(6)]
    assert all(int(part.counts.max()) == 4 for part in data.splits.values())
    assert (f"left out 3 links to folders not followed (each leads into or above a folder read "
            f"already): all -> {root}, up -> {tmp_path}, c1/loop -> {root / 'c1'}") in caplog.text


def test_links_to_folders_elsewhere_are_followed_once(tmp_path, caplog):
    """Split folders made of links into a folder of every class: read; a second link to the
    same folder would count its images twice: not followed."""
    store = flat_folder(tmp_path / "store", classes=6)
    root = tmp_path / "root"
    for split, labels in (("train", (0, 1, 2)), ("val", (3,)), ("test", (4, 5))):
        (root / split).mkdir(parents=True)
        for label in labels:
            (root / split / f"c{label}").symlink_to(store / f"c{label}")
    (root / "train" / "copy_of_c0").symlink_to(store / "c0")
    with caplog.at_level(logging.WARNING):
        data = load(root, tmp_path / "data")
    assert names(data) == {"train": ("c0", "c1", "c2"), "val": ("c3",), "test": ("c4", "c5")}
    assert f"train/copy_of_c0 -> {store / 'c0'}" in caplog.text


def test_hidden_folders_empty_folders_and_loose_images_are_left_out_and_named(tmp_path, caplog):
    root = flat_folder(tmp_path / "root")
    write_images(root / "c0" / ".ipynb_checkpoints", 2, seed=9)
    write_images(root / ".cache" / "x", 4)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no images")
    write_images(root, 2, seed=7)  # images directly in the root
    with caplog.at_level(logging.WARNING):
        data = load(root, tmp_path / "data")
    assert sorted(sum(names(data).values(), ())) == [f"c{i}" for i in range(6)]
    assert all(int(part.counts.max()) == 4 for part in data.splits.values())
    assert "left out 1 folders holding no images (.png, .jpg" in caplog.text
    assert "): notes" in caplog.text
    assert "left out 2 images outside any class folder: 000.png, 001.png" in caplog.text


def test_what_lies_beside_split_folders_and_names_shared_between_splits_are_named(tmp_path,
                                                                                  caplog):
    root = tmp_path / "root"
    for split in ("train", "val", "test"):
        flat_folder(root / split, classes=3)  # c0, c1, c2 in every split
    flat_folder(root / "extra", classes=1)
    with caplog.at_level(logging.WARNING):
        load(root, tmp_path / "data")
    assert "left out 1 folders and images beside train/, val/ and test/: extra" in caplog.text
    assert ("3 class names are in more than one split folder (c0: train, val, test, c1: train, "
            "val, test, c2: train, val, test)") in caplog.text


# Split files -------------------------------------------------------------------------------------
def split_file(tmp_path: Path, text: str, encoding: str = "utf-8") -> str:
    path = tmp_path / "split.csv"
    path.write_text(text, encoding=encoding)
    return str(path)


def test_a_class_in_two_splits_of_the_split_file_is_one_line_naming_both(tmp_path):
    root = flat_folder(tmp_path / "root")
    path = split_file(tmp_path, "class,split\nc0,train\nc1,val\nc2,test\nc0,test\n")
    message = one_line_error(lambda: load(root, tmp_path / "data", split_file=path))
    assert message == (f"dataset.split_file {path}: class 'c0' is in two splits (train on line "
                       "2, test on line 5); a class is in one")


def test_split_file_mistakes_are_one_line(tmp_path):
    root = flat_folder(tmp_path / "root")
    (root / "empty").mkdir()
    path = split_file(tmp_path, "c0,train\nempty,val\n")
    assert one_line_error(lambda: load(root, tmp_path / "data", split_file=path)) == (
        f"dataset.split_file {path}, line 2: class 'empty' is not a class folder of "
        "dataset.root (its folder holds no images)")
    path = split_file(tmp_path, "c0,train\nc1,train\nc2,val\n")
    assert one_line_error(lambda: load(root, tmp_path / "data", split_file=path)) == (
        f"dataset.split_file {path} puts no class in the test split; each of train, val, test "
        "needs classes")


def test_a_split_file_saved_by_a_spreadsheet_with_a_byte_order_mark_is_read(tmp_path):
    root = flat_folder(tmp_path / "root")
    path = split_file(tmp_path, "class,split\nc0,train\nc1,train\nc2,val\nc3,test\nc0,train\n",
                      encoding="utf-8-sig")
    assert names(load(root, tmp_path / "data", split_file=path)) == {
        "train": ("c0", "c1"), "val": ("c2",), "test": ("c3",)}


# The cache ---------------------------------------------------------------------------------------
def test_a_file_replaced_by_one_of_the_same_size_with_its_time_restored_rebuilds_the_cache(
        tmp_path):
    root = flat_folder(tmp_path / "root")
    first = load(root, tmp_path / "data")
    image = root / first.splits["train"].names[0] / "000.png"
    times = os.stat(image)
    replacement = tmp_path / "replacement.png"
    Image.new("RGB", (12, 12), (255, 0, 0)).save(replacement)
    size = image.stat().st_size
    # the same size: the replacement is padded to it (PNG readers stop at the IEND chunk)
    padded = replacement.read_bytes()
    assert len(padded) < size
    image.write_bytes(padded + b"\0" * (size - len(padded)))
    os.utime(image, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (size, times.st_mtime_ns)
    again = load(root, tmp_path / "data")
    assert np.asarray(again.splits["train"].examples[0]).reshape(3, -1).mean(1).round().tolist() \
        == [255, 0, 0]


# Settings chosen from the images -----------------------------------------------------------------
def auto(root: Path, data_dir: Path, **settings) -> ImageFolder:
    return ImageFolder(str(root), str(data_dir), **settings)


def test_grey_drawings_saved_as_rgb_jpegs_train_grey_small_and_unaugmented(tmp_path, caplog):
    root = tmp_path / "drawings"
    for label in range(6):
        write_drawings(root / f"c{label}", 4, seed=label)
    with caplog.at_level(logging.INFO):
        data = auto(root, tmp_path / "data")
    assert data.input_shape == (1, 28, 28)
    assert data.augment is None
    assert "image folder: every image is grey -> channels=1; median shorter side" in caplog.text
    assert "-> image_size=28 (1/4 of it, within 28-84 px); grey images -> augment=null" in (
        caplog.text)


def test_colour_photos_train_in_colour_augmented_at_a_quarter_of_their_size(tmp_path, caplog):
    root = tmp_path / "photos"
    for label in range(6):
        write_images(root / f"c{label}", 4, seed=label, size=(260, 200), suffix=".jpg")
    write_drawings(root / "grey", 4)  # grey images among them change nothing
    with caplog.at_level(logging.INFO):
        data = auto(root, tmp_path / "data")
    assert data.input_shape == (3, 50, 50)
    assert isinstance(data.augment, Augment) and data.augment.flip == 0.5
    assert (f"image folder: {Path('c0') / '000.jpg'} is in colour -> channels=3; median shorter "
            "side 200 px -> image_size=50") in caplog.text


def test_grey_png_images_are_grey_from_their_mode(tmp_path):
    root = tmp_path / "grey"
    for label in range(6):
        write_images(root / f"c{label}", 4, seed=label, mode="L", size=(40, 30))
    data = auto(root, tmp_path / "data")
    assert data.input_shape == (1, 28, 28)


def test_the_size_rule_is_a_quarter_of_the_median_shorter_side_within_28_to_84():
    assert [auto_image_size(side) for side in (10, 105, 200, 336, 500)] == [28, 28, 50, 84, 84]


def test_explicit_settings_win_and_need_no_survey(tmp_path):
    root = tmp_path / "drawings"
    for label in range(6):
        write_drawings(root / f"c{label}", 3, seed=label)
    augment = Augment()
    data = auto(root, tmp_path / "data", image_size=16, channels=3, augment=augment)
    assert data.input_shape == (3, 16, 16) and data.augment is augment
    assert not list((tmp_path / "data").rglob("survey.json"))


def test_the_survey_is_recorded_and_a_later_run_chooses_the_same_without_reading_images(
        tmp_path, monkeypatch):
    root = tmp_path / "drawings"
    for label in range(6):
        write_drawings(root / f"c{label}", 3, seed=label)
    first = auto(root, tmp_path / "data")

    def no_survey(*args, **kwargs):
        raise AssertionError("surveyed again")

    monkeypatch.setattr("metalearn.data.image_cache.survey_images", no_survey)
    again = auto(root, tmp_path / "data")
    assert again.input_shape == first.input_shape == (1, 28, 28) and again.augment is None
    write_images(root / "c0", 1, seed=3, size=(30, 30), suffix=".png")  # a colour image more
    with pytest.raises(AssertionError, match="surveyed again"):
        auto(root, tmp_path / "data")
    monkeypatch.undo()
    assert auto(root, tmp_path / "data").input_shape[0] == 3


@pytest.mark.parametrize("setting,value,message", [
    ("channels", "rgb", "dataset.channels='rgb' must be 1 (grey) or 3 (RGB), or auto"),
    ("image_size", "big", "dataset.image_size='big' must be a whole number of pixels >= 1, or "
                          "auto"),
    ("image_size", 0, "dataset.image_size=0 must be a whole number of pixels >= 1, or auto"),
    ("augment", "yes", "dataset.augment='yes' must be auto (chosen from the images), null (none) "
                       "or an augmentation, e.g. +dataset/augment=natural"),
])
def test_bad_settings_are_one_line(tmp_path, setting, value, message):
    root = flat_folder(tmp_path / "root")
    assert one_line_error(lambda: auto(root, tmp_path / "data", **{setting: value})).startswith(
        message)


def test_the_config_defaults_are_auto_and_an_explicit_augmentation_wins(tmp_path):
    root = tmp_path / "drawings"
    for label in range(6):
        write_drawings(root / f"c{label}", 3, seed=label)
    base = ["dataset=image_folder", f"dataset.root={root}", f"paths.data_dir={tmp_path}"]
    cfg = make_config(base, tmp_path)
    assert (cfg.dataset.image_size, cfg.dataset.channels, cfg.dataset.augment) == ("auto",) * 3
    assert instantiate(cfg.dataset).augment is None
    chosen = instantiate(make_config([*base, "+dataset/augment=natural",
                                      "dataset.augment.flip=0"], tmp_path).dataset)
    assert isinstance(chosen.augment, Augment) and chosen.augment.flip == 0
    assert chosen.input_shape == (1, 28, 28)


def test_train_py_takes_the_auto_defaults(tmp_path):
    root = tmp_path / "drawings"
    for label in range(10):
        write_drawings(root / f"c{label}", 3, seed=label)
    datamodule, _ = build(make_config(["dataset=image_folder", f"dataset.root={root}",
                                       f"paths.data_dir={tmp_path}", "episode.n_way=2",
                                       "episode.query_size=1", "episode.train_n_way=2",
                                       "episode.train_query_size=1"], tmp_path))
    assert datamodule.tasks.input_shape == (1, 28, 28)
