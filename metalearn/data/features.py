"""A table of feature vectors: `dataset=features dataset.path=embeddings.parquet`.

Text, users, sensor signals come in as vectors computed elsewhere (embeddings), one row each, in
a CSV, Parquet or NumPy (.npz) file. Two kinds of task come from one table:

- classification (`label_column`): N-way K-shot tasks over the labels, with every label's rows
  in one of meta-train / meta-val / meta-test (from `split_column` when the table has one, else
  the labels shuffled with `split_seed` and cut by `split_fractions`);
- regression (`task_column` and `target_column`; `dataset=features_regression` also sets a
  regression task shape): each group of rows with the same task value is one task, K support
  and Q query rows of it (per-user or per-machine adaptation); groups, not rows, are split
  between meta-train, meta-val and meta-test, and a group with fewer than K + Q rows gives no
  task (counted in one line: metalearn/data/grouped.py).

The features are chosen deliberately (`FeatureChoice`): the list `feature_columns`, or every
column but those above and `ignore_columns`, less the columns that would teach the learner
something other than the features: a column that copies the label or the target (never learned
from, even when listed) and one that identifies rows (a different whole number in every row: a
row id sorted by class lifts pure noise from chance to 95%) or tasks, each named in one line.
An .npz file holds the features as `x` [rows, features] beside one-dimensional arrays that are
the other columns (`y`, ...).

The features become numbers as a statistician would have them (`encode_features`), every
statistic from the meta-train rows alone, since a test label or group must be new:
`categorical_columns` (null: the columns of text, booleans or pandas categories) are one-hot
coded against a reference level or fed as integer codes to an embedding
(`categorical_encoding`), a level unseen in meta-train being one unknown level; blanks are
refused or imputed with the meta-train mean or median (`missing`); in regression tables,
columns constant over the meta-train rows are dropped (they make a linear model's design
singular); `standardize` centres and scales every numeric feature by its meta-train mean and
deviation, `standardize_target` a regression target likewise (`target_offset`,
`target_scale`). Each of these is said in one line. A broken table (no rows, a blank label,
text in a numeric column, NaN in a target, pickled .npz arrays) is refused in one line naming
the file, the column and its first rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from metalearn.data.episodes import ClassExamples
from metalearn.data.grouped import GroupedRegression, GroupedRows
from metalearn.data.task_family import SPLITS, ClassificationTaskFamily, TaskFamily
from metalearn.errors import UserError

log = logging.getLogger(__name__)
FORMATS = (".csv", ".parquet", ".pq", ".npz")
SHOWN_ROWS = 3  # rows a message names before "..."


def read_table(path: str) -> pd.DataFrame:
    """The table at `path` (CSV, Parquet, or .npz with `x` and one-dimensional columns), with at
    least one row."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"dataset.path={path!r}: no such file")
    suffix = file.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"dataset.path={path!r}: the table must be one of {', '.join(FORMATS)}")
    try:
        if suffix == ".csv":
            table = pd.read_csv(file)
        elif suffix == ".npz":
            with np.load(file, allow_pickle=False) as arrays:
                table = npz_table(arrays, path)
        else:
            table = pd.read_parquet(file)
    except (pd.errors.ParserError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0]
        raise UserError(f"dataset.path={path!r} cannot be read as a table: {message}") from None
    if len(table) == 0:
        raise UserError(f"dataset.path={path!r}: the table has no rows (its columns: "
                        f"{', '.join(map(str, table.columns))})")
    return table


def npz_table(arrays, path: str) -> pd.DataFrame:
    """Columns x0, x1, ... of `x` [rows, features] and the other arrays [rows] by their names."""
    x = npz_array(arrays, "x", path) if "x" in arrays.files else None
    if x is None or x.ndim != 2:
        raise UserError(f"dataset.path={path!r}: an .npz table needs `x`, an array "
                        "[rows, features]")
    columns = {f"x{i}": x[:, i] for i in range(x.shape[1])}
    for key in arrays.files:
        if key == "x":
            continue
        if key in columns:
            raise UserError(f"dataset.path={path!r}: array {key!r} has the name of column "
                            f"{key[1:]} of x; rename it")
        array = npz_array(arrays, key, path)
        if array.shape != (len(x),):
            raise UserError(f"dataset.path={path!r}: array {key!r} has shape {array.shape}; "
                            f"columns beside x are [{len(x)}] arrays")
        columns[key] = array
    return pd.DataFrame(columns)


def npz_array(arrays, key: str, path: str) -> np.ndarray:
    """Array `key` of an .npz file; object arrays (what pandas' strings become) are refused:
    numpy stores them pickled, and unpickling a file can run code."""
    try:
        return arrays[key]
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise
        raise UserError(f"dataset.path={path!r}: array {key!r} holds Python objects, which numpy "
                        "stores pickled and which are not loaded (unpickling can run code); save "
                        f"it as text or numbers, e.g. np.savez(..., {key}=df[{key!r}].to_numpy("
                        "dtype=str))") from None


def row_list(mask: np.ndarray) -> str:
    """The first rows where `mask` holds, as 'rows 4, 40, 41, ... (12 of 90, counting from 0)'."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(map(str, rows[:SHOWN_ROWS])) + (", ..." if len(rows) > SHOWN_ROWS else "")
    plural = "s" if len(rows) > 1 else ""
    return f"row{plural} {shown} ({len(rows)} of {len(mask)}, counting from 0)"


def column(table: pd.DataFrame, key: str, name: str | None) -> pd.Series | None:
    if name is None:
        return None
    if name not in table.columns:
        raise UserError(f"dataset.{key}={name!r} is not a column of the table; its columns are: "
                        f"{', '.join(map(str, table.columns))}")
    return table[name]


def key_column(table: pd.DataFrame, path: str, key: str, name: str | None) -> pd.Series | None:
    """A column that sorts the rows (labels, tasks, splits): a value in every row."""
    values = column(table, key, name)
    if values is not None:
        blank = values.isna().to_numpy()
        if blank.any():
            raise UserError(f"dataset.{key}={name!r} is blank in {path} at {row_list(blank)}; "
                            "every row needs one")
    return values


def target_column_values(table: pd.DataFrame, path: str, name: str) -> np.ndarray:
    """The regression target as float32 [rows]: finite numbers in every row."""
    what = f"dataset.target_column={name!r}"
    targets = column(table, "target_column", name)
    check_numeric(targets, what, path, "every target is a number")
    values = pd.to_numeric(targets, errors="coerce").to_numpy(np.float32, na_value=np.nan)
    check_finite(values, what, path, "fill or drop those rows")
    return values


def check_numeric(values: pd.Series, what: str, path: str, fix: str) -> None:
    """One line naming the first rows that are not numbers, where a column must be numbers."""
    if pd.api.types.is_numeric_dtype(values):
        return
    text = (pd.to_numeric(values, errors="coerce").isna() & values.notna()).to_numpy()
    if text.any():
        raise UserError(f"{what} is not numeric (e.g. {values[text].iloc[0]!r}) in {path} at "
                        f"{row_list(text)}; {fix}")


def check_finite(values: np.ndarray, what: str, path: str, fix: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise UserError(f"{what} holds NaN or infinite values in {path} at {row_list(bad)}; {fix}")


def role_columns(**names: str | None) -> dict[str, str]:
    """dataset.<key> -> its column, for the keys that name one; each names its own column."""
    named = {key: name for key, name in names.items() if name is not None}
    keys_of = {}
    for key, name in named.items():
        if name in keys_of:
            raise UserError(f"dataset.{keys_of[name]} and dataset.{key} both name {name!r}; each "
                            "names its own column")
        keys_of[name] = key
    return named


def listed_columns(table: pd.DataFrame, key: str, names: Sequence[str]) -> list[str]:
    """dataset.<key>: a list of the table's columns."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise UserError(f"dataset.{key}={names!r} must be a list of column names, e.g. "
                        f"[{names}]")
    for name in names:
        if name not in table.columns:
            raise UserError(f"dataset.{key} names {name!r}, not a column of the table; its "
                            f"columns are: {', '.join(map(str, table.columns))}")
    return list(names)


def floats(values: pd.Series) -> np.ndarray:
    """A numeric column as float64 [rows], NaN where blank (pandas' nullable Int64, Float64 and
    boolean columns, which Parquet gives, hold pd.NA)."""
    return values.to_numpy(np.float64, na_value=np.nan)


def identifies_rows(values: pd.Series) -> bool:
    """Whole numbers, a different one in every row: a row id, an index, a timestamp. Continuous
    features differ in every row too, so only whole numbers count."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return False
    numbers = floats(values)
    head = numbers[:100]  # cheap first: a continuous feature is not whole in its first rows
    return (bool(np.all(head == np.round(head)) and np.all(numbers == np.round(numbers)))
            and values.is_unique)


def measures(values: pd.Series) -> bool:
    """Numbers that are not all whole: measurements, not names or codes."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return False
    numbers = floats(values)
    numbers = numbers[np.isfinite(numbers)]
    return bool(np.any(numbers != np.round(numbers)))


def one_to_one(values: pd.Series, key: pd.Series, first_key_rows: np.ndarray) -> bool:
    """Whether rows hold equal `values` exactly where they hold equal `key` values.
    `first_key_rows`: the rows of the key's first value (computed once per key)."""
    value = pd.factorize(values)[0]  # equal values, equal codes (blanks -1, pd.NA too)
    if not (value[first_key_rows] == value[0]).all():  # cheap first: constant on those rows
        return False
    pairs = pd.DataFrame({"value": value, "key": pd.factorize(key)[0]}).drop_duplicates()
    return len(pairs) == pairs["value"].nunique() == pairs["key"].nunique()


def first_value_rows(key: pd.Series) -> np.ndarray:
    """The rows that hold the key's first value."""
    keys = key.to_numpy()
    return np.flatnonzero(keys == keys[0])


def rescales(values: pd.Series, key_floats: np.ndarray | None) -> bool:
    """Whether numeric `values` are a key in other units (correlation +-1). `key_floats`: the
    key as float64 (computed once per key), None where it is not numeric."""
    if key_floats is None or not pd.api.types.is_numeric_dtype(values):
        return False
    numbers = floats(values)
    # cheap first: a copy correlates +-1 on any rows (NaN where they are constant: go on)
    if abs(correlation(numbers[:100], key_floats[:100])) < 1 - 1e-9:
        return False
    return abs(correlation(numbers, key_floats)) > 1 - 1e-9


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation; NaN where either is constant."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.corrcoef(a.astype(np.float64), b)[0, 1])


class FeatureChoice:
    """Which columns of a table may be features. Never one of the dataset's own columns (label,
    task, target, split) or a copy of what the tasks predict (the label, or the target): learning
    from it would learn the answer. By default not a column that identifies rows (a row id
    sorted by class scores far above chance on noise) or tasks either, though one listed in
    dataset.feature_columns is learned from: a whole number different in every row may be a
    measurement (a timestamp, a price in cents), and the user has said so. A column of numbers
    that are not all whole, one value per task, is a measurement of the group (a county's
    uranium, a school's mean SES: what a mixed model's group-level covariate is) and is kept;
    whole numbers or text one per task are the task's name in another column."""

    def __init__(self, table: pd.DataFrame, roles: dict[str, str], predicted: str,
                 tasks: str | None = None):
        self.table, self.roles = table, roles
        self.predicted = roles[predicted]
        self.predicted_kind = predicted.removesuffix("_column")
        # a key whose values all differ (a continuous target) is matched one-to-one by any column
        # whose values all differ, so only its rescalings count as copies
        self.predicted_repeats = not table[self.predicted].is_unique
        self.predicted_rows = first_value_rows(table[self.predicted])
        self.predicted_floats = (floats(table[self.predicted])
                                 if pd.api.types.is_numeric_dtype(table[self.predicted]) else None)
        # likewise a task column whose values all differ identifies nothing but rows
        self.tasks = tasks if tasks is not None and not table[tasks].is_unique else None
        self.task_rows = None if self.tasks is None else first_value_rows(table[self.tasks])

    def copies_answer(self, name: str) -> str | None:
        """Why column `name` is the answer under other names, or None."""
        values, answer = self.table[name], self.table[self.predicted]
        if rescales(values, self.predicted_floats) or (
                self.predicted_repeats and one_to_one(values, answer, self.predicted_rows)):
            return f"copies the {self.predicted_kind} column {self.predicted!r}"
        return None

    def identifies(self, name: str) -> str | None:
        """Why column `name` identifies rows or tasks, or None."""
        values = self.table[name]
        if identifies_rows(values):
            return "a different whole number in every row: it identifies rows"
        if (self.tasks is not None and not measures(values)
                and one_to_one(values, self.table[self.tasks], self.task_rows)):
            return f"copies the task column {self.tasks!r}: it identifies tasks"
        return None

    def columns(self, feature_columns: Sequence[str] | None,
                ignore_columns: Sequence[str]) -> list[str]:
        """The feature columns: `feature_columns` as listed, or every column but the dataset's
        own, `ignore_columns` and those that copy the answer or identify rows or tasks (named in
        one line)."""
        ignored = listed_columns(self.table, "ignore_columns", ignore_columns or [])
        if feature_columns is not None:
            return self.listed(listed_columns(self.table, "feature_columns", feature_columns),
                               ignored)
        candidates = [name for name in self.table.columns
                      if name not in self.roles.values() and name not in ignored]
        copies = {name: reason for name in candidates if (reason := self.copies_answer(name))}
        identifiers = {name: reason for name in candidates
                       if name not in copies and (reason := self.identifies(name))}
        if copies or identifiers:
            log.warning("left out of the features: %s%s",
                        "; ".join(f"{name} ({reason})"
                                  for name, reason in {**copies, **identifiers}.items()),
                        "; to learn from an identifier, list the features in "
                        "dataset.feature_columns" if identifiers else "")
        features = [name for name in candidates if name not in copies and name not in identifiers]
        if not features:
            raise UserError("the table has no feature columns besides the label, task, target and "
                            "split columns, dataset.ignore_columns and the columns left out")
        return features

    def listed(self, names: list[str], ignored: list[str]) -> list[str]:
        """dataset.feature_columns, refused where a name is the dataset's own column, an ignored
        one or a copy of the answer; an identifier is kept, with a warning."""
        for name in names:
            role = next((key for key, column in self.roles.items() if column == name), None)
            if role is not None:
                raise UserError(f"dataset.feature_columns names {name!r}, which is "
                                f"dataset.{role}; list only feature columns")
            if name in ignored:
                raise UserError(f"dataset.feature_columns and dataset.ignore_columns both name "
                                f"{name!r}")
            copy = self.copies_answer(name)
            if copy is not None:
                raise UserError(f"dataset.feature_columns names {name!r}, which {copy} (learning "
                                "from it would learn the answer); leave it out")
        identifiers = {name: reason for name in names if (reason := self.identifies(name))}
        if identifiers:
            log.warning("dataset.feature_columns lists %s; learning from them as asked",
                        "; ".join(f"{name} ({reason})" for name, reason in identifiers.items()))
        return names


# Feature columns: numeric or categorical, blanks, constants, encoding -------------------------
MISSING = ("refuse", "mean", "median")
ENCODINGS = ("onehot", "embedding")
#: a blank cell of a categorical column where dataset.missing imputes: a level of its own
MISSING_LEVEL = "(missing)"
#: a text column is numeric, with a few cells to correct, where at least this share of its
#: non-blank cells are numbers; below it, its numbers are level names (sizes "8", "10", "XL")
NUMERIC_SHARE = 0.9


class ColumnSettings(NamedTuple):
    """How feature columns become numbers (dataset.categorical_columns, categorical_encoding,
    missing, standardize); see `encode_features`."""

    categorical_columns: Sequence[str] | None = None
    categorical_encoding: str = "onehot"
    missing: str = "refuse"
    standardize: bool = False

    def checked(self) -> ColumnSettings:
        for key, value, allowed in (("categorical_encoding", self.categorical_encoding,
                                     ENCODINGS), ("missing", self.missing, MISSING)):
            if value not in allowed:
                raise UserError(f"dataset.{key}={value!r} must be one of: {', '.join(allowed)}")
        return self


class EncodedFeatures(NamedTuple):
    """A table's feature columns as the learners see them."""

    values: np.ndarray              # float32 [rows, features]
    names: list[str]                # one per column of `values`
    categories: tuple[int, ...]     # embedding: the levels of each code column (the last ones)


def encode_features(table: pd.DataFrame, names: Sequence[str], path: str,
                    train_rows: np.ndarray, settings: ColumnSettings,
                    drop_constant: bool) -> EncodedFeatures:
    """The feature columns `names` as float32 numbers, every statistic taken from the meta-train
    rows `train_rows` alone (a test group is new: nothing of it may shape its inputs):

    - numeric and categorical columns (`feature_kinds`); a numeric column with text cells is
      refused naming them;
    - blanks (pandas' markers: '', NA, nan, null, ...) refused, or imputed with the numeric
      column's meta-train mean or median (categorical blanks become the level '(missing)'),
      counted in one line;
    - with `drop_constant`, columns that hold one value over the meta-train rows dropped, named
      in one line: in a linear model beside the intercept they make the design singular;
    - numeric columns standardised by their meta-train mean and deviation (`standardize`);
    - categorical columns after them, their levels those of the meta-train rows (`categorical`).
    """
    numeric, categorical = feature_kinds(table, names, settings.categorical_columns, path)
    numbers = numeric_matrix(table, numeric, path, settings.missing)
    levels = [level_values(table[name], name, path, settings.missing) for name in categorical]
    if drop_constant:
        constant = [name for name, column in zip(numeric, numbers.T)
                    if len(np.unique(column[train_rows][~np.isnan(column[train_rows])])) <= 1]
        constant += [name for name, values in zip(categorical, levels)
                     if values.iloc[train_rows].nunique() <= 1]
        if constant:
            log.warning("left out of the features, constant over the meta-train rows: %s",
                        ", ".join(constant))
        if len(constant) == len(names):
            raise UserError(f"every feature column ({', '.join(names)}) holds one value over "
                            f"the meta-train rows of {path}: there is nothing to learn from")
        kept = [index for index, name in enumerate(numeric) if name not in constant]
        numeric, numbers = [numeric[i] for i in kept], numbers[:, kept]
        levels = [values for name, values in zip(categorical, levels) if name not in constant]
        categorical = [name for name in categorical if name not in constant]
    numbers = imputed(numbers, numeric, train_rows, settings.missing, levels)
    if settings.standardize and numeric:
        mean, std = standardizer(numbers[train_rows])
        numbers = (numbers - mean) / std
    blocks, columns, categories = [numbers], list(numeric), []
    for name, values in zip(categorical, levels):
        block, block_names, count = categorical_block(name, values, train_rows,
                                                      settings.categorical_encoding)
        blocks.append(block)
        columns += block_names
        categories += [count] if count else []
    return EncodedFeatures(np.concatenate(blocks, axis=1).astype(np.float32, copy=False),
                           columns, tuple(categories))


def feature_kinds(table: pd.DataFrame, names: Sequence[str],
                  categorical_columns: Sequence[str] | None, path: str
                  ) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns, each in table order: dataset.categorical_columns
    as listed, or, where it is null, the columns of booleans, of pandas categories and of text
    that is mostly not numbers (`categorical_text`), named in one line."""
    if categorical_columns is not None:
        listed = listed_columns(table, "categorical_columns", categorical_columns)
        for name in listed:
            if name not in names:
                raise UserError(f"dataset.categorical_columns names {name!r}, which is not a "
                                f"feature column; the features are: {', '.join(names)}")
        categorical = [name for name in names if name in listed]
    else:
        categorical = [name for name in names if categorical_text(table[name])]
        if categorical:
            log.info("categorical feature columns (not numbers; dataset.categorical_columns "
                     "lists them otherwise): %s", ", ".join(categorical))
    return [name for name in names if name not in categorical], categorical


def categorical_text(values: pd.Series) -> bool:
    """Whether a column is categorical by its values: booleans, pandas categories, or text of
    which fewer than NUMERIC_SHARE of the non-blank cells are numbers (at least that share is a
    numeric column with a few cells to correct: '3.1', '2,5', '?')."""
    if isinstance(values.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(values):
        return True
    if pd.api.types.is_numeric_dtype(values):
        return False
    present = values.dropna()
    if pd.api.types.infer_dtype(present) == "boolean":  # True/False read beside blanks
        return True
    numbers = pd.to_numeric(present, errors="coerce").notna()
    return len(present) > 0 and float(numbers.mean()) < NUMERIC_SHARE


def numeric_matrix(table: pd.DataFrame, names: Sequence[str], path: str,
                   missing: str) -> np.ndarray:
    """The numeric columns as float32 [rows, features], NaN where blank (refused unless
    dataset.missing imputes); text and infinite values are refused, naming their rows."""
    fix = ("correct those cells, blank them (dataset.missing says what blanks become), or list "
           "the column in dataset.categorical_columns or dataset.ignore_columns")
    for name in names:
        check_numeric(table[name], f"feature column {name!r}", path, fix)
    numbers = pd.DataFrame({name: pd.to_numeric(table[name], errors="coerce") for name in names},
                           index=table.index).to_numpy(np.float32, na_value=np.nan)
    refused = missing == "refuse"
    bad = ~np.isfinite(numbers) if refused else np.isinf(numbers)
    if bad.any():
        first = int(bad.any(0).argmax())
        raise UserError(f"feature column {names[first]!r} holds "
                        f"{'NaN or infinite' if refused else 'infinite'} values in {path} at "
                        f"{row_list(bad[:, first])}; fill or drop those rows" + (
                            ", set dataset.missing=mean or median to impute the blanks"
                            if refused else "") + ", or leave the column out with "
                        "dataset.ignore_columns")
    return numbers


def level_values(values: pd.Series, name: str, path: str, missing: str) -> pd.Series:
    """A categorical column's values as objects, blanks as the level '(missing)' (refused with
    dataset.missing=refuse)."""
    blank = values.isna().to_numpy()
    if blank.any() and missing == "refuse":
        raise UserError(f"feature column {name!r} is blank in {path} at {row_list(blank)}; "
                        "fill or drop those rows, or set dataset.missing=mean or median (a "
                        f"categorical blank is then a level {MISSING_LEVEL!r} of its own)")
    return values.astype(object).where(~blank, MISSING_LEVEL)


def imputed(numbers: np.ndarray, names: Sequence[str], train_rows: np.ndarray, missing: str,
            categorical: Sequence[pd.Series]) -> np.ndarray:
    """Blank numeric cells filled with their column's meta-train mean or median; the filled
    cells and the '(missing)' ones of the `categorical` columns counted per column in one
    line."""
    counts = []
    blank = np.isnan(numbers)
    if blank.any():
        train = numbers[train_rows]
        unknown = np.isnan(train).all(0)
        if unknown.any():
            raise UserError(f"feature column {names[int(unknown.argmax())]!r} is blank in every "
                            f"meta-train row: dataset.missing={missing} has no value to impute "
                            "from; leave it out with dataset.ignore_columns")
        statistic = np.nanmean(train, 0) if missing == "mean" else np.nanmedian(train, 0)
        numbers = np.where(blank, statistic, numbers).astype(np.float32)
        counts += [f"{name} {count}" for name, count in zip(names, blank.sum(0)) if count]
    counts += [f"{values.name} {count} (as the level {MISSING_LEVEL!r})" for values in categorical
               if (count := int((values == MISSING_LEVEL).sum()))]
    if counts:
        log.info("dataset.missing=%s: blank cells filled from the meta-train rows: %s", missing,
                 ", ".join(counts))
    return numbers


def sorted_levels(levels: Sequence) -> list:
    """Levels in their natural order (numbers as numbers, or all as text where they mix kinds),
    '(missing)' last: never the reference level."""
    present = [level for level in levels if level != MISSING_LEVEL]
    try:
        present = sorted(present)
    except TypeError:
        present = sorted(present, key=str)
    return present + [MISSING_LEVEL] * (len(present) < len(levels))


def categorical_block(name: str, values: pd.Series, train_rows: np.ndarray,
                      encoding: str) -> tuple[np.ndarray, list[str], int]:
    """One categorical column as (float32 [rows, columns], their names, its levels for an
    embedding or 0). Its levels are those of the meta-train rows, in sorted order; a level no
    meta-train row has (a new county type, a blank unseen in meta-train) is read as one unknown
    level, counted in one line.

    onehot: an indicator column "name=level" for every level but the first, the reference level
    (treatment coding, as R's contr.treatment and patsy code it): beside a linear model's
    intercept, indicators of every level sum to one in every row and make OLS and MixedLM
    singular. An unknown level's row holds the meta-train share of each level: a linear model
    predicts it as the average over the known levels (all zeros would read it as the reference
    level). embedding: the level's index as a float (the unknown level: the last index), for
    an nn.Embedding of levels + 1 rows (metalearn/models/backbones.py, MLP)."""
    levels = sorted_levels(values.iloc[train_rows].unique().tolist())
    codes = pd.Index(levels, dtype=object).get_indexer(values)
    unknown = codes < 0
    if unknown.any():
        unseen = sorted_levels(values[unknown].unique().tolist())
        shown = ", ".join(map(str, unseen[:SHOWN_ROWS])) + (", ..." if len(unseen) > SHOWN_ROWS
                                                            else "")
        log.warning("feature column %r holds %d level%s that no meta-train row has (%s) at %s: "
                    "read as one unknown level", name, len(unseen), "s" * (len(unseen) > 1),
                    shown, row_list(unknown))
    if encoding == "embedding":
        codes = np.where(unknown, len(levels), codes)
        return codes[:, None].astype(np.float32), [name], len(levels) + 1
    indicators = (codes[:, None] == np.arange(1, len(levels))).astype(np.float32)
    indicators[unknown] = indicators[train_rows].mean(0)
    return indicators, [f"{name}={level}" for level in levels[1:]], 0


def assign_splits(row_keys: pd.Series, split: pd.Series | None, what: str,
                  fractions: Sequence[float], seed: int) -> dict[str, list]:
    """split -> the keys (labels or groups) in it, in sorted order: from the split column (every
    key's rows in one split), or the sorted keys shuffled with `seed` and cut by `fractions`."""
    keys = sorted(row_keys.unique().tolist())
    if split is None:
        if len(fractions) != 3 or any(f <= 0 for f in fractions):
            raise UserError(f"dataset.split_fractions={list(fractions)} must be three numbers > 0")
        order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed)).tolist()
        total = sum(fractions)
        train = round(len(keys) * fractions[0] / total)
        val = round(len(keys) * fractions[1] / total)
        shuffled = [keys[i] for i in order]
        parts = {"train": shuffled[:train], "val": shuffled[train:train + val],
                 "test": shuffled[train + val:]}
    else:
        parts = {name: [] for name in SPLITS}
        for key, names in pd.Series(split.values, index=row_keys.values).groupby(level=0):
            names = set(names)
            if len(names) > 1:
                raise UserError(f"the rows of {what} {key!r} are in several splits "
                                f"({', '.join(sorted(map(str, names)))}); a {what} is in one")
            (name,) = names
            if name not in SPLITS:
                raise UserError(f"the split column holds {name!r} (for {what} {key!r}); splits "
                                f"are: {', '.join(SPLITS)}")
            parts[name].append(key)
    empty = [name for name, part in parts.items() if not part]
    if empty:
        raise UserError(f"none of the {len(keys)} {what}s is in the {empty[0]} split")
    return {name: sorted(part) for name, part in parts.items()}


def grouped(row_keys: pd.Series, keys: Sequence) -> tuple[np.ndarray, Tensor]:
    """The rows of `keys`, key by key, and their offsets [len(keys) + 1] (rows in table order)."""
    rows = [np.flatnonzero(row_keys.values == key) for key in keys]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(r) for r in rows])]))
    return np.concatenate(rows), offsets


def standardizer(train_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Meta-train mean and deviation per feature (deviation 1 where a feature is constant)."""
    mean, std = train_features.mean(0), train_features.std(0)
    return mean, np.where(std > 0, std, 1.0).astype(np.float32)


class FeatureClassification(ClassificationTaskFamily):
    """N-way K-shot tasks over a table's labels; see the module docstring. Constant columns are
    kept: harmless to a network, and no linear model is fitted to these tasks."""

    drops_small_classes = True

    def __init__(self, table: pd.DataFrame, path: str, label_column: str,
                 split_column: str | None, feature_columns: Sequence[str] | None,
                 ignore_columns: Sequence[str], standardize: bool,
                 split_fractions: Sequence[float], split_seed: int, min_examples: int | None,
                 categorical_columns: Sequence[str] | None = None,
                 categorical_encoding: str = "onehot", missing: str = "refuse"):
        settings = ColumnSettings(categorical_columns, categorical_encoding, missing,
                                  standardize).checked()
        roles = role_columns(label_column=label_column, split_column=split_column)
        labels = key_column(table, path, "label_column", label_column)
        split = key_column(table, path, "split_column", split_column)
        names = FeatureChoice(table, roles, "label_column").columns(feature_columns,
                                                                    ignore_columns)
        kept = np.arange(len(table))  # the rows of the labels kept
        if min_examples is not None:
            counts = labels.value_counts()
            small = counts[counts < min_examples]
            if len(small):
                log.warning("dataset.min_examples=%d leaves out %d labels: %s", min_examples,
                            len(small), ", ".join(f"{k} ({n})" for k, n in small.items()))
                keep = ~labels.isin(small.index).values
                labels, kept = labels[keep], kept[keep]
                split = None if split is None else split[keep]
        parts = assign_splits(labels, split, "label", split_fractions, split_seed)
        encoded = encode_features(table, names, path, kept[grouped(labels, parts["train"])[0]],
                                  settings, drop_constant=False)
        features = encoded.values[kept]
        self.feature_names, self.categories = tuple(encoded.names), encoded.categories
        splits = {}
        for name, keys in parts.items():
            rows, offsets = grouped(labels, keys)
            splits[name] = ClassExamples(torch.from_numpy(np.ascontiguousarray(features[rows])),
                                         offsets, tuple(map(str, keys)))
        super().__init__(splits)


class FeatureRegression(GroupedRegression):
    """One task per group of rows (`task_column`), regressing `target_column` on the features
    (`encode_features`: categorical columns, blanks, constant columns, standardisation, all from
    the meta-train rows). With `standardize_target` the targets are centred and scaled by the
    meta-train rows' mean and deviation (`target_offset`, `target_scale`): the default learning
    rates then suit targets in any units."""

    def __init__(self, table: pd.DataFrame, path: str, task_column: str, target_column: str,
                 split_column: str | None, feature_columns: Sequence[str] | None,
                 ignore_columns: Sequence[str], standardize: bool, standardize_target: bool,
                 split_fractions: Sequence[float], split_seed: int,
                 categorical_columns: Sequence[str] | None = None,
                 categorical_encoding: str = "onehot", missing: str = "refuse"):
        settings = ColumnSettings(categorical_columns, categorical_encoding, missing,
                                  standardize).checked()
        roles = role_columns(task_column=task_column, target_column=target_column,
                             split_column=split_column)
        groups = key_column(table, path, "task_column", task_column)
        split = key_column(table, path, "split_column", split_column)
        targets = target_column_values(table, path, target_column)[:, None]
        names = FeatureChoice(table, roles, "target_column", task_column).columns(
            feature_columns, ignore_columns)
        parts = assign_splits(groups, split, "task", split_fractions, split_seed)
        train_rows = grouped(groups, parts["train"])[0]
        encoded = encode_features(table, names, path, train_rows, settings, drop_constant=True)
        offset, scale = 0.0, 1.0
        if standardize_target:
            mean, std = standardizer(targets[train_rows])
            targets, offset, scale = (targets - mean) / std, float(mean[0]), float(std[0])
        splits = {}
        for name, keys in parts.items():
            rows, offsets = grouped(groups, keys)
            splits[name] = GroupedRows(torch.from_numpy(np.ascontiguousarray(encoded.values[rows])),
                                       torch.from_numpy(targets[rows]), offsets,
                                       tuple(map(str, keys)))
        super().__init__(splits, encoded.names, offset, scale, encoded.categories)


def feature_table(path: str, label_column: str | None = "label", task_column: str | None = None,
                  target_column: str | None = None, split_column: str | None = None,
                  feature_columns: Sequence[str] | None = None,
                  ignore_columns: Sequence[str] = (), standardize: bool = False,
                  standardize_target: bool = True,
                  split_fractions: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
                  min_examples: int | None = None,
                  categorical_columns: Sequence[str] | None = None,
                  categorical_encoding: str = "onehot", missing: str = "refuse") -> TaskFamily:
    """The tasks of a feature table (`dataset=features`): regression when `task_column` is given
    (with `target_column`), classification over `label_column` otherwise. See the module
    docstring."""
    if task_column is not None or target_column is not None:
        if task_column is None or target_column is None:
            raise UserError("regression tasks need both dataset.task_column and "
                            "dataset.target_column")
        return regression_table(path, task_column, target_column, split_column, feature_columns,
                                ignore_columns, standardize, standardize_target, split_fractions,
                                split_seed, categorical_columns, categorical_encoding, missing)
    if label_column is None:
        raise UserError("dataset.label_column (classification) or dataset.task_column and "
                        "dataset.target_column (regression) must be set")
    return FeatureClassification(read_table(path), path, label_column, split_column,
                                 feature_columns, ignore_columns, standardize, split_fractions,
                                 split_seed, min_examples, categorical_columns,
                                 categorical_encoding, missing)


def regression_table(path: str, task_column: str, target_column: str,
                     split_column: str | None = None, feature_columns: Sequence[str] | None = None,
                     ignore_columns: Sequence[str] = (), standardize: bool = False,
                     standardize_target: bool = True,
                     split_fractions: Sequence[float] = (0.64, 0.16, 0.20),
                     split_seed: int = 0, categorical_columns: Sequence[str] | None = None,
                     categorical_encoding: str = "onehot",
                     missing: str = "refuse") -> FeatureRegression:
    """The per-group regression tasks of a feature table (`dataset=features_regression`, whose
    config also sets a regression task shape)."""
    return FeatureRegression(read_table(path), path, task_column, target_column, split_column,
                             feature_columns, ignore_columns, standardize, standardize_target,
                             split_fractions, split_seed, categorical_columns,
                             categorical_encoding, missing)
