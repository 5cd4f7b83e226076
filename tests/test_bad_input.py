"""Every user mistake gets one line naming the key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from metalearn.data.omniglot import Omniglot
from metalearn.errors import UserError
from metalearn.run.build import build
from tests.conftest import ROOT, make_config


def build_error(tmp_path, *overrides: str) -> str:
    with pytest.raises(UserError) as caught:
        build(make_config(list(overrides), tmp_path))
    return str(caught.value)


@pytest.mark.parametrize("key,value", [
    ("episode.n_way", 0), ("episode.k_shot", 0), ("episode.query_size", -3),
    ("episode.num_tasks", 0), ("episode.test_episodes", -1), ("episode.meta_batch_size", 0),
    ("num_epochs", 0),
])
def test_zero_or_negative_sizes(tmp_path, key, value):
    message = build_error(tmp_path, f"{key}={value}")
    assert message == f"{key}={value} must be a whole number >= 1"


def test_non_positive_learning_rate(tmp_path):
    message = build_error(tmp_path, "algorithm=maml", "algorithm.inner_lr=0")
    assert message == "algorithm.inner_lr=0 must be a number > 0"


def test_n_way_above_the_classes_of_a_split(tmp_path):
    # lake: meta-val holds the 186 characters of the 5 held-out background alphabets
    message = build_error(tmp_path, "dataset.split=lake", "dataset.rotations=false",
                          "episode.n_way=200")
    assert message.startswith("episode.n_way=200 is more than the 186 classes of omniglot's meta-val")
    assert "use at most 186" in message


def test_shots_plus_queries_above_examples_per_class(tmp_path):
    message = build_error(tmp_path, "episode.k_shot=10", "episode.query_size=15")
    assert message.startswith("episode.k_shot + episode.query_size = 10 + 15 = 25 is more than "
                              "the 20 examples per class of omniglot")


def test_unknown_split(tmp_path):
    message = build_error(tmp_path, "dataset.split=random")
    assert message == "dataset.split='random' is not a known Omniglot split; use one of: lake, vinyals"


@pytest.mark.parametrize("overrides,message", [
    (["algorithm=maml", "+algorithm.inner_lrr=0.1"], "algorithm.inner_lrr is not a setting of "
     "metalearn.algorithms.maml.MAML; its settings are: allow_nograd, allow_unused, backend, "
     "backward_per_task, checkpoint_inner_steps, compile, first_order, "
     "inner_lr, inner_steps, optimizer, outer_lr, output_layer, scheduler, "
     "test_inner_steps, transductive_bn"),
    (["backbone=mlp", "backbone.flatten=false"], "backbone.flatten is not a setting of "
     "metalearn.models.backbones.MLP; its settings are: embedding_dim, hidden_sizes"),
])
def test_unknown_setting_lists_the_valid_ones(tmp_path, overrides, message):
    assert build_error(tmp_path, *overrides) == message


def test_algorithm_without_regression(tmp_path):
    message = build_error(tmp_path, "dataset=sinusoid", "algorithm=protonet")
    assert message.startswith("algorithm=protonet does not support regression")


def test_missing_archive_names_the_file(tmp_path):
    with pytest.raises(UserError, match=r"images_background\.zip not found .*archive_dir"):
        Omniglot(str(tmp_path / "data"), archive_dir=str(tmp_path), download=False)


def test_corrupt_archive_names_the_file(tmp_path):
    (tmp_path / "images_background.zip").write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match=r"images_background\.zip is corrupt"):
        Omniglot(str(tmp_path / "data"), archive_dir=str(tmp_path), download=False)


def test_archive_with_wrong_structure(tmp_path):
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        archive.writestr("images_background/Latin/character01/0001_01.png", b"")
    with pytest.raises(UserError, match=r"holds 1 alphabets, 1 characters .* expected 30, 964"):
        Omniglot(str(tmp_path / "data"), archive_dir=str(tmp_path), download=False)


def run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_command_line_mistake_is_one_line_without_traceback():
    result = run_train("episode.k_shot=0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: episode.k_shot=0 must be a whole number >= 1"
    assert "Traceback" not in result.stderr


def test_unknown_algorithm_lists_the_valid_names():
    result = run_train("algorithm=protonett")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "protonett" in result.stderr
    for name in ("maml", "protonet"):
        assert name in result.stderr


def test_unknown_key_is_named():
    result = run_train("episode.n_wya=5")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "n_wya" in result.stderr


def test_other_training_way_needs_a_metric_method(tmp_path):
    message = build_error(tmp_path, "algorithm=maml", "episode.train_n_way=20")
    assert message.startswith("episode.train_n_way=20 differs from episode.n_way=5, but maml has "
                              "one output per class")


def test_training_query_size_is_checked_too(tmp_path):
    message = build_error(tmp_path, "episode.train_query_size=19", "episode.k_shot=2")
    assert message.startswith("episode.k_shot + episode.train_query_size = 2 + 19 = 21 is more")
