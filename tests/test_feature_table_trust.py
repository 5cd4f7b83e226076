"""A feature table (`dataset=features`) learns only from the columns a user meant as features,
and a broken table is refused in one line naming the file, the column and the first rows."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from metalearn.data.episodes import TaskShape, seeded_generator
from metalearn.data.features import feature_table
from metalearn.data.sinusoid import Sinusoid
from metalearn.data.task_family import EpisodeSettings
from metalearn.run.build import build
from tests.conftest import make_config
from tests.helpers import digits_frame, sinusoid_table, user_error


def noise_table() -> pd.DataFrame:
    """Six labels of 15 rows of pure-noise features f0..f4, rows sorted by label, with a row
    id."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["ant", "bee", "cat", "dog", "eel", "fox"], 15)
    frame = pd.DataFrame(rng.normal(size=(len(labels), 5)), columns=[f"f{i}" for i in range(5)])
    frame.insert(0, "row_id", np.arange(len(labels)))
    frame["label"] = labels
    return frame


def machine_table() -> pd.DataFrame:
    """Ten machines of 20 rows: wear (in the hundreds) against load, a per-machine number and
    wear in other units beside them."""
    rng = np.random.default_rng(1)
    machines = np.repeat([f"m{i:02d}" for i in range(10)], 20)
    load = rng.uniform(0, 1, len(machines))
    wear = 300 + 80 * load + rng.normal(0, 5, len(machines))
    return pd.DataFrame({"machine": machines, "load": load, "wear": wear,
                         "machine_no": np.repeat(np.arange(10), 20), "wear_mm": wear * 1000})


def feature_log(caplog) -> list[str]:
    """What the table (and its groups: metalearn/data/grouped.py) said."""
    return [r.getMessage() for r in caplog.records
            if r.name in ("metalearn.data.features", "metalearn.data.grouped")]


# Which columns are features -----------------------------------------------------------------
def test_row_identifiers_and_label_copies_are_left_out_in_one_named_line(tmp_path, caplog):
    frame = noise_table()
    frame.insert(1, "label", frame["label"], allow_duplicates=True)  # read back as label.1
    frame.to_csv(tmp_path / "t.csv", index=False)
    with caplog.at_level(logging.WARNING):
        table = feature_table(str(tmp_path / "t.csv"))
    assert table.input_shape == (5,)  # f0..f4 only
    (line,) = feature_log(caplog)
    assert "row_id" in line and "label.1" in line and "dataset.feature_columns" in line
    assert "\n" not in line


def test_digits_and_sinusoid_tables_keep_every_feature(tmp_path, caplog):
    """Whole-number pixels repeat between rows and continuous features are not whole numbers:
    neither is taken for an identifier."""
    digits_frame().to_csv(tmp_path / "digits.csv", index=False)
    with caplog.at_level(logging.WARNING):
        digits = feature_table(str(tmp_path / "digits.csv"))
        sinusoid = feature_table(str(sinusoid_table(tmp_path / "sin.csv", functions=50)),
                                 task_column="function", target_column="y")
    assert digits.input_shape == (64,) and sinusoid.input_shape == (1,)
    assert feature_log(caplog) == []


def test_ignore_columns_leaves_columns_out(tmp_path):
    noise_table().to_csv(tmp_path / "t.csv", index=False)
    table = feature_table(str(tmp_path / "t.csv"), ignore_columns=["f0", "f1"])
    assert table.input_shape == (3,)
    assert user_error(lambda: feature_table(str(tmp_path / "t.csv"), ignore_columns=["f9"])
                      ).startswith("dataset.ignore_columns names 'f9', not a column of the "
                                         "table; its columns are: row_id, f0,")


def test_listed_features_that_copy_the_label_are_refused(tmp_path):
    frame = noise_table().assign(code=lambda f: f["label"].map(
        {"ant": 7, "bee": 3, "cat": 5, "dog": 1, "eel": 9, "fox": 0}))
    frame.to_csv(tmp_path / "t.csv", index=False)
    path = str(tmp_path / "t.csv")
    message = user_error(lambda: feature_table(path, feature_columns=["f0", "code"]))
    assert message.startswith("dataset.feature_columns names 'code', which copies the label "
                              "column 'label'")
    assert user_error(lambda: feature_table(path, feature_columns=["f0", "label"])).startswith(
        "dataset.feature_columns names 'label', which is dataset.label_column")
    assert user_error(lambda: feature_table(path, feature_columns="f0")).startswith(
        "dataset.feature_columns='f0' must be a list of column names")


def test_a_listed_row_identifier_is_learned_from_with_a_warning(tmp_path, caplog):
    noise_table().to_csv(tmp_path / "t.csv", index=False)
    with caplog.at_level(logging.WARNING):
        table = feature_table(str(tmp_path / "t.csv"), feature_columns=["row_id", "f0"])
    assert table.input_shape == (2,)
    (line,) = feature_log(caplog)
    assert "row_id" in line


def test_regression_leaves_out_target_copies_and_task_numbers(tmp_path, caplog):
    machine_table().to_csv(tmp_path / "wear.csv", index=False)
    path = str(tmp_path / "wear.csv")
    with caplog.at_level(logging.WARNING):
        table = feature_table(path, task_column="machine", target_column="wear")
    assert table.input_shape == (1,)  # load
    (line,) = feature_log(caplog)
    assert "wear_mm" in line and "machine_no" in line
    assert user_error(lambda: feature_table(path, task_column="machine", target_column="wear",
                                            feature_columns=["load", "wear_mm"])).startswith(
        "dataset.feature_columns names 'wear_mm', which copies the target column 'wear'")


# Broken tables -------------------------------------------------------------------------------
def test_a_table_without_rows_is_one_line(tmp_path):
    (tmp_path / "t.csv").write_text("f0,f1,label\n")
    assert user_error(feature_table, str(tmp_path / "t.csv")) == (
        f"dataset.path='{tmp_path / 't.csv'}': the table has no rows (its columns: f0, f1, label)")


@pytest.mark.parametrize("key", ["label_column", "split_column"])
def test_a_blank_label_or_split_is_one_line_naming_rows(tmp_path, key):
    frame = noise_table()
    frame["part"] = frame["label"].map({"ant": "train", "bee": "train", "cat": "train",
                                        "dog": "val", "eel": "test", "fox": "test"})
    name = "label" if key == "label_column" else "part"
    frame[name] = frame[name].astype(object)
    frame.loc[[4, 40], name] = None
    frame.to_csv(tmp_path / "t.csv", index=False)
    message = user_error(lambda: feature_table(str(tmp_path / "t.csv"), split_column="part"))
    assert message.startswith(f"dataset.{key}={name!r} is blank in {tmp_path / 't.csv'} at "
                              "rows 4, 40 (2 of 90, counting from 0)")


def test_nan_in_a_target_or_feature_is_refused_up_front(tmp_path):
    frame = machine_table().drop(columns=["wear_mm", "machine_no"])
    frame.loc[[7, 9], "wear"] = np.nan
    frame.to_csv(tmp_path / "target.csv", index=False)
    message = user_error(lambda: feature_table(str(tmp_path / "target.csv"),
                                               task_column="machine", target_column="wear"))
    assert message.startswith("dataset.target_column='wear' holds NaN or infinite values in "
                              f"{tmp_path / 'target.csv'} at rows 7, 9")
    frame = noise_table()
    frame.loc[12, "f3"] = np.inf
    frame.to_csv(tmp_path / "feature.csv", index=False)
    message = user_error(feature_table, str(tmp_path / "feature.csv"))
    assert message.startswith("feature column 'f3' holds NaN or infinite values in "
                              f"{tmp_path / 'feature.csv'} at row 12")


def test_a_non_numeric_target_names_its_rows(tmp_path):
    frame = machine_table().astype({"wear": object})
    frame.loc[3, "wear"] = "broken"
    frame.to_csv(tmp_path / "t.csv", index=False)
    assert user_error(lambda: feature_table(str(tmp_path / "t.csv"), task_column="machine",
                                            target_column="wear")).startswith(
        "dataset.target_column='wear' is not numeric (e.g. 'broken') in "
        f"{tmp_path / 't.csv'} at row 3")


def test_npz_from_pandas_names_the_object_array_and_how_to_save_it(tmp_path):
    frame = noise_table()
    features = frame[[f"f{i}" for i in range(5)]].to_numpy()
    np.savez(tmp_path / "objects.npz", x=features, label=frame["label"].to_numpy())
    message = user_error(feature_table, str(tmp_path / "objects.npz"))
    assert message.startswith(f"dataset.path='{tmp_path / 'objects.npz'}': array 'label' holds "
                              "Python objects")
    assert "label=df['label'].to_numpy(dtype=str)" in message
    np.savez(tmp_path / "text.npz", x=features, label=frame["label"].to_numpy(dtype=str))
    assert feature_table(str(tmp_path / "text.npz")).input_shape == (5,)
    np.savez(tmp_path / "clash.npz", x=features, x2=frame["row_id"].to_numpy(),
             label=frame["label"].to_numpy(dtype=str))
    assert user_error(feature_table, str(tmp_path / "clash.npz")).startswith(
        f"dataset.path='{tmp_path / 'clash.npz'}': array 'x2' has the name of column 2 of x")


# Regression: target scale, groups, episode shape ---------------------------------------------
def test_regression_targets_are_standardised_on_meta_train_rows(tmp_path):
    machine_table().to_csv(tmp_path / "wear.csv", index=False)
    table = feature_table(str(tmp_path / "wear.csv"), task_column="machine",
                          target_column="wear")
    train_targets = table.rows("train").targets
    assert float(train_targets.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(train_targets.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    wear = machine_table().set_index("machine")["wear"]
    raw_train = wear.loc[list(table.rows("train").names)].to_numpy()
    assert table.target_scale == pytest.approx(raw_train.std(), rel=1e-5)
    raw = feature_table(str(tmp_path / "wear.csv"), task_column="machine", target_column="wear",
                        standardize_target=False)
    assert raw.target_scale == 1.0
    assert torch.allclose(raw.rows("val").targets,
                          table.rows("val").targets * table.target_scale + raw_train.mean())


def test_target_scale_is_one_for_other_families(tmp_path):
    digits_frame().to_csv(tmp_path / "digits.csv", index=False)
    assert Sinusoid().target_scale == 1.0
    assert feature_table(str(tmp_path / "digits.csv")).target_scale == 1.0


def test_split_record_names_each_splits_groups(tmp_path):
    machine_table().to_csv(tmp_path / "wear.csv", index=False)
    table = feature_table(str(tmp_path / "wear.csv"), task_column="machine",
                          target_column="wear")
    record = table.split_record()
    assert sorted(record) == ["test", "train", "val"]
    assert sorted(sum(record.values(), [])) == [f"m{i:02d}" for i in range(10)]
    assert record["val"] == list(table.rows("val").names)


def test_one_shot_regression_is_named_and_every_query_size_is_checked(tmp_path, caplog):
    machine_table().to_csv(tmp_path / "wear.csv", index=False)
    table = feature_table(str(tmp_path / "wear.csv"), task_column="machine",
                          target_column="wear")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        table.check_fits(EpisodeSettings(n_way=5, k_shot=1, query_size=15), "features")
    (line,) = feature_log(caplog)
    assert line.startswith("episode.k_shot=1:") and "episode.k_shot=10" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        table.check_fits(EpisodeSettings(n_way=5, k_shot=10, query_size=10), "features")
    assert feature_log(caplog) == []
    # meta-val and meta-test tasks take query_size rows even where training takes fewer
    message = user_error(table.check_fits, EpisodeSettings(5, 10, 15, None, 5), "features")
    assert message.startswith("episode.k_shot + episode.query_size = 25 is more than the rows of "
                              "every group of features's meta-train split (the largest has 20)")
    table.sample("val", TaskShape(1, 10, 10), 2, seeded_generator(0))


def test_train_config_builds_a_regression_table_with_its_new_keys(tmp_path, caplog):
    machine_table().to_csv(tmp_path / "wear.csv", index=False)
    cfg = make_config(["algorithm=maml", "dataset=features",
                       f"dataset.path={tmp_path / 'wear.csv'}", "dataset.task_column=machine",
                       "dataset.target_column=wear", "dataset.ignore_columns=[machine_no]"],
                      tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        datamodule, _ = build(cfg)
    lines = feature_log(caplog)
    # wear_mm left out (machine_no is ignored, so not named); the episode default of 1 shot named
    assert any("wear_mm" in line and "machine_no" not in line for line in lines)
    assert any(line.startswith("episode.k_shot=1:") for line in lines)
    assert datamodule.val_dataloader().dataset[0].support_x.shape[-1] == 1


def test_the_regression_table_config_builds_regression_tasks_of_named_groups(tmp_path):
    machine_table().to_csv(tmp_path / "wear.csv", index=False)
    table = ["dataset=features_regression", f"dataset.path={tmp_path / 'wear.csv'}",
             "algorithm=maml"]
    message = user_error(lambda: build(make_config(table, tmp_path / "a")))
    assert message.startswith(("dataset.task_column has no default and must be set",
                               "dataset.target_column has no default and must be set"))
    datamodule, _ = build(make_config([*table, "dataset.task_column=machine",
                                       "dataset.target_column=wear"], tmp_path / "b"))
    batch = datamodule.val_dataloader().dataset[0]
    assert batch.support_x.shape[-1] == 1 and batch.support_y.shape[-1] == 1


def test_the_regression_table_config_sets_a_regression_task_shape(tmp_path):
    table = ["dataset=features_regression", "dataset.path=wear.csv"]
    cfg = make_config([*table, "algorithm=maml"], tmp_path / "a")
    assert (cfg.episode.k_shot, cfg.episode.query_size) == (10, 10)
    assert make_config([*table, "episode.k_shot=3"], tmp_path / "b").episode.k_shot == 3
