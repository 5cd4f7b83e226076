"""A table of feature vectors: `dataset=features dataset.path=embeddings.parquet`.

Text, users, sensor signals come in as vectors computed elsewhere (embeddings), one row each, in
a CSV, Parquet or NumPy (.npz) file. Two kinds of task come from one table:

- classification (`label_column`): N-way K-shot tasks over the labels, with every label's rows
  in one of meta-train / meta-val / meta-test (from `split_column` when the table has one, else
  the labels shuffled with `split_seed` and cut by `split_fractions`);
- regression (`task_column` and `target_column`; `dataset=features_regression` also sets a
  regression task shape): each group of rows with the same task value is one task, K support
  and Q query rows of it (per-user or per-machine adaptation); groups, not rows, are split
  between meta-train, meta-val and meta-test.

The features are chosen deliberately (`FeatureChoice`): the list `feature_columns`, or every
column but those above and `ignore_columns`, less the columns that would teach the learner
something other than the features: a column that copies the label or the target (never learned
from, even when listed) and one that identifies rows (a different whole number in every row: a
row id sorted by class lifts pure noise from chance to 95%) or tasks, each named in one line.
An .npz file holds the features as `x` [rows, features] beside one-dimensional arrays that are
the other columns (`y`, ...). `standardize` centres and scales every feature by its meta-train
mean and deviation, `standardize_target` a regression target likewise (`target_scale`).
A broken table (no rows, a blank label, NaN in a target or feature, pickled .npz arrays) is
refused in one line naming the file, the column and its first rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from metalearn.data.episodes import ClassExamples, TaskBatch, TaskShape, gather
from metalearn.data.task_family import (
    SPLITS,
    ClassificationTaskFamily,
    EpisodeSettings,
    TaskFamily,
)
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
    values = targets.to_numpy(np.float32)
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


def identifies_rows(values: pd.Series) -> bool:
    """Whole numbers, a different one in every row: a row id, an index, a timestamp. Continuous
    features differ in every row too, so only whole numbers count."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return False
    numbers = values.to_numpy()
    head = numbers[:100]  # cheap first: a continuous feature is not whole in its first rows
    return (bool(np.all(head == np.round(head)) and np.all(numbers == np.round(numbers)))
            and values.is_unique)


def one_to_one(values: pd.Series, key: pd.Series, first_key_rows: np.ndarray) -> bool:
    """Whether rows hold equal `values` exactly where they hold equal `key` values.
    `first_key_rows`: the rows of the key's first value (computed once per key)."""
    value = values.to_numpy()
    if not (value[first_key_rows] == value[0]).all():  # cheap first: constant on those rows
        return False
    pairs = pd.DataFrame({"value": value, "key": key.to_numpy()}).drop_duplicates()
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
    numbers = values.to_numpy()
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
    measurement (a timestamp, a price in cents), and the user has said so."""

    def __init__(self, table: pd.DataFrame, roles: dict[str, str], predicted: str,
                 tasks: str | None = None):
        self.table, self.roles = table, roles
        self.predicted = roles[predicted]
        self.predicted_kind = predicted.removesuffix("_column")
        # a key whose values all differ (a continuous target) is matched one-to-one by any column
        # whose values all differ, so only its rescalings count as copies
        self.predicted_repeats = not table[self.predicted].is_unique
        self.predicted_rows = first_value_rows(table[self.predicted])
        self.predicted_floats = (table[self.predicted].to_numpy(np.float64)
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
        if self.tasks is not None and one_to_one(values, self.table[self.tasks], self.task_rows):
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


def feature_matrix(table: pd.DataFrame, names: Sequence[str], path: str) -> np.ndarray:
    """The named columns as float32 [rows, features]: finite numbers."""
    fix = ("leave the column out with dataset.ignore_columns, or list the features in "
           "dataset.feature_columns")
    for name in names:
        check_numeric(table[name], f"feature column {name!r}", path, fix)
    features = table[names].to_numpy(np.float32)
    bad = ~np.isfinite(features).all(0)
    if bad.any():
        first = int(bad.argmax())
        check_finite(features[:, first], f"feature column {names[first]!r}", path,
                     f"fill or drop those rows, or {fix}")
    return features


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
    """N-way K-shot tasks over a table's labels; see the module docstring."""

    drops_small_classes = True

    def __init__(self, table: pd.DataFrame, path: str, label_column: str,
                 split_column: str | None, feature_columns: Sequence[str] | None,
                 ignore_columns: Sequence[str], standardize: bool,
                 split_fractions: Sequence[float], split_seed: int, min_examples: int | None):
        roles = role_columns(label_column=label_column, split_column=split_column)
        labels = key_column(table, path, "label_column", label_column)
        split = key_column(table, path, "split_column", split_column)
        names = FeatureChoice(table, roles, "label_column").columns(feature_columns,
                                                                    ignore_columns)
        features = feature_matrix(table, names, path)
        if min_examples is not None:
            counts = labels.value_counts()
            small = counts[counts < min_examples]
            if len(small):
                log.warning("dataset.min_examples=%d leaves out %d labels: %s", min_examples,
                            len(small), ", ".join(f"{k} ({n})" for k, n in small.items()))
                keep = ~labels.isin(small.index).values
                labels, features = labels[keep], features[keep]
                split = None if split is None else split[keep]
        parts = assign_splits(labels, split, "label", split_fractions, split_seed)
        if standardize:
            mean, std = standardizer(features[grouped(labels, parts["train"])[0]])
            features = (features - mean) / std
        splits = {}
        for name, keys in parts.items():
            rows, offsets = grouped(labels, keys)
            splits[name] = ClassExamples(torch.from_numpy(np.ascontiguousarray(features[rows])),
                                         offsets, tuple(map(str, keys)))
        super().__init__(splits)


class FeatureRegression(TaskFamily):
    """One task per group of rows (`task_column`), regressing `target_column` on the features:
    K support and Q query rows of the group, drawn without replacement. With
    `standardize_target` the targets are centred and scaled by the meta-train rows' mean and
    deviation (`target_scale`): the default learning rates then suit targets in any units."""

    task_type = "regression"
    output_dim = 1

    def __init__(self, table: pd.DataFrame, path: str, task_column: str, target_column: str,
                 split_column: str | None, feature_columns: Sequence[str] | None,
                 ignore_columns: Sequence[str], standardize: bool, standardize_target: bool,
                 split_fractions: Sequence[float], split_seed: int):
        roles = role_columns(task_column=task_column, target_column=target_column,
                             split_column=split_column)
        groups = key_column(table, path, "task_column", task_column)
        split = key_column(table, path, "split_column", split_column)
        targets = target_column_values(table, path, target_column)[:, None]
        names = FeatureChoice(table, roles, "target_column", task_column).columns(
            feature_columns, ignore_columns)
        features = feature_matrix(table, names, path)
        parts = assign_splits(groups, split, "task", split_fractions, split_seed)
        train_rows = grouped(groups, parts["train"])[0]
        if standardize:
            mean, std = standardizer(features[train_rows])
            features = (features - mean) / std
        self.scale = 1.0
        if standardize_target:
            mean, std = standardizer(targets[train_rows])
            targets, self.scale = (targets - mean) / std, float(std[0])
        self.splits = {}
        for name, keys in parts.items():
            rows, offsets = grouped(groups, keys)
            self.splits[name] = (ClassExamples(torch.from_numpy(np.ascontiguousarray(
                features[rows])), offsets, tuple(map(str, keys))),
                torch.from_numpy(targets[rows]))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.splits["train"][0].example_shape

    @property
    def target_scale(self) -> float:
        return self.scale

    def split_record(self) -> dict[str, list[str]]:
        """The groups (tasks) of each split, by name."""
        return {split: list(data.names) for split, (data, _) in self.splits.items()}

    def smallest_group(self) -> tuple[str, int]:
        """The name and row count of the smallest task (group), of any split."""
        groups = min((data for data, _ in self.splits.values()),
                     key=lambda data: int(data.counts.min()))
        index = int(groups.counts.argmin())
        return groups.names[index], int(groups.counts[index])

    def check_fits(self, episode: EpisodeSettings, name: str) -> None:
        """A task's support and query rows are distinct rows of its group. One support row, the
        default made for classification, is named: a regression task rarely adapts from it."""
        group, rows = self.smallest_group()
        queries = [("query_size", episode.query_size)]
        if episode.train_query_size:
            queries.append(("train_query_size", episode.train_query_size))
        for key, query_size in queries:
            needed = episode.k_shot + query_size
            if needed > rows:
                raise UserError(f"episode.k_shot + episode.{key} = {needed} is more than the "
                                f"{rows} rows of task {group!r}, the table's smallest; use at "
                                f"most {rows} together")
        suggested = min(10, rows // 2)  # the sinusoid's 10 + 10, where the groups hold as many
        if episode.k_shot == 1 and suggested > 1:
            log.warning("episode.k_shot=1: each task adapts from one row of its group (the "
                        "default, made for classification); for per-group regression set, e.g., "
                        "episode.k_shot=%d episode.query_size=%d (the smallest group has %d rows)",
                        suggested, suggested, rows)

    def num_classes(self, split: str) -> int:
        """The tasks (groups) of a split."""
        return self.splits[split][0].num_classes

    def sample(self, split: str, shape: TaskShape, batch_size: int,
               generator: torch.Generator) -> TaskBatch:
        data, targets = self.splits[split]
        _, k_shot, query_size = shape
        group = torch.randint(data.num_classes, (batch_size,), generator=generator)
        counts = data.counts[group]
        most = int(counts.max())
        order = torch.rand(batch_size, most, generator=generator)
        order.masked_fill_(torch.arange(most) >= counts.unsqueeze(-1), 2.0)
        rows = data.offsets[group].unsqueeze(-1) + order.topk(k_shot + query_size, dim=1,
                                                               largest=False).indices
        x, y = gather(data.examples, rows), gather(targets, rows)
        # classes: each task's group, for the count of test groups and their interval
        return TaskBatch(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:],
                         group.unsqueeze(1))


def feature_table(path: str, label_column: str | None = "label", task_column: str | None = None,
                  target_column: str | None = None, split_column: str | None = None,
                  feature_columns: Sequence[str] | None = None,
                  ignore_columns: Sequence[str] = (), standardize: bool = False,
                  standardize_target: bool = True,
                  split_fractions: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
                  min_examples: int | None = None) -> TaskFamily:
    """The tasks of a feature table (`dataset=features`): regression when `task_column` is given
    (with `target_column`), classification over `label_column` otherwise. See the module
    docstring."""
    if task_column is not None or target_column is not None:
        if task_column is None or target_column is None:
            raise UserError("regression tasks need both dataset.task_column and "
                            "dataset.target_column")
        return regression_table(path, task_column, target_column, split_column, feature_columns,
                                ignore_columns, standardize, standardize_target, split_fractions,
                                split_seed)
    if label_column is None:
        raise UserError("dataset.label_column (classification) or dataset.task_column and "
                        "dataset.target_column (regression) must be set")
    return FeatureClassification(read_table(path), path, label_column, split_column,
                                 feature_columns, ignore_columns, standardize, split_fractions,
                                 split_seed, min_examples)


def regression_table(path: str, task_column: str, target_column: str,
                     split_column: str | None = None, feature_columns: Sequence[str] | None = None,
                     ignore_columns: Sequence[str] = (), standardize: bool = False,
                     standardize_target: bool = True,
                     split_fractions: Sequence[float] = (0.64, 0.16, 0.20),
                     split_seed: int = 0) -> FeatureRegression:
    """The per-group regression tasks of a feature table (`dataset=features_regression`, whose
    config also sets a regression task shape)."""
    return FeatureRegression(read_table(path), path, task_column, target_column, split_column,
                             feature_columns, ignore_columns, standardize, standardize_target,
                             split_fractions, split_seed)
