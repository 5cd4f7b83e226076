"""A table of feature vectors: `dataset=features dataset.path=embeddings.parquet`.

Text, users, sensor signals come in as vectors computed elsewhere (embeddings), one row each, in
a CSV, Parquet or NumPy (.npz) file. Two kinds of task come from one table:

- classification (`label_column`): N-way K-shot tasks over the labels, with every label's rows
  in one of meta-train / meta-val / meta-test (from `split_column` when the table has one, else
  the labels shuffled with `split_seed` and cut by `split_fractions`);
- regression (`task_column` and `target_column`): each group of rows with the same task value
  is one task, K support and Q query rows of it (per-user or per-machine adaptation); groups,
  not rows, are split between meta-train, meta-val and meta-test.

The features are every numeric column but those (or `feature_columns`); an .npz file holds them
as `x` [rows, features] beside one-dimensional arrays that are the other columns (`y`, ...).
`standardize` centres and scales every feature by its meta-train mean and deviation.
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


def read_table(path: str) -> pd.DataFrame:
    """The table at `path` (CSV, Parquet, or .npz with `x` and one-dimensional columns)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"dataset.path={path!r}: no such file")
    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(file)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(file)
        if suffix == ".npz":
            return npz_table(np.load(file, allow_pickle=False), file)
    except (pd.errors.ParserError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0]
        raise UserError(f"dataset.path={path!r} cannot be read as a table: {message}") from None
    raise UserError(f"dataset.path={path!r}: the table must be one of {', '.join(FORMATS)}")


def npz_table(arrays, file: Path) -> pd.DataFrame:
    if "x" not in arrays or arrays["x"].ndim != 2:
        raise UserError(f"dataset.path={str(file)!r}: an .npz table needs `x`, an array "
                        "[rows, features]")
    x = arrays["x"]
    columns = {f"x{i}": x[:, i] for i in range(x.shape[1])}
    for key in arrays.files:
        if key != "x":
            if arrays[key].shape != (len(x),):
                raise UserError(f"dataset.path={str(file)!r}: array {key!r} has shape "
                                f"{arrays[key].shape}; columns beside x are [{len(x)}] arrays")
            columns[key] = arrays[key]
    return pd.DataFrame(columns)


def column(table: pd.DataFrame, key: str, name: str | None) -> pd.Series | None:
    if name is None:
        return None
    if name not in table.columns:
        raise UserError(f"dataset.{key}={name!r} is not a column of the table; its columns are: "
                        f"{', '.join(map(str, table.columns))}")
    return table[name]


def feature_matrix(table: pd.DataFrame, columns: Sequence[str] | None,
                   used: Sequence[str]) -> np.ndarray:
    """The features as float32 [rows, features]: the named columns, or every column but `used`."""
    names = list(columns) if columns is not None else [c for c in table.columns if c not in used]
    for name in names:
        if name not in table.columns:
            raise UserError(f"dataset.feature_columns names {name!r}, not a column of the table; "
                            f"its columns are: {', '.join(map(str, table.columns))}")
        if not pd.api.types.is_numeric_dtype(table[name]):
            raise UserError(f"feature column {name!r} is not numeric (e.g. "
                            f"{table[name].iloc[0]!r}); give the numeric ones with "
                            "dataset.feature_columns")
    if not names:
        raise UserError("the table has no feature columns beside the label, split, task and "
                        "target columns")
    features = table[names].to_numpy(np.float32)
    if not np.isfinite(features).all():
        row = int(np.argwhere(~np.isfinite(features))[0][0])
        raise UserError(f"feature row {row} holds NaN or infinite values")
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


def grouped(features: np.ndarray, row_keys: pd.Series, keys: Sequence) -> tuple[np.ndarray, Tensor]:
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

    def __init__(self, table: pd.DataFrame, label_column: str, split_column: str | None,
                 feature_columns: Sequence[str] | None, standardize: bool,
                 split_fractions: Sequence[float], split_seed: int,
                 min_examples: int | None):
        labels = column(table, "label_column", label_column)
        split = column(table, "split_column", split_column)
        used = [name for name in (label_column, split_column) if name is not None]
        features = feature_matrix(table, feature_columns, used)
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
            mean, std = standardizer(features[grouped(features, labels, parts["train"])[0]])
            features = (features - mean) / std
        splits = {}
        for name, keys in parts.items():
            rows, offsets = grouped(features, labels, keys)
            splits[name] = ClassExamples(torch.from_numpy(np.ascontiguousarray(features[rows])),
                                         offsets, tuple(map(str, keys)))
        super().__init__(splits)


class FeatureRegression(TaskFamily):
    """One task per group of rows (`task_column`), regressing `target_column` on the features:
    K support and Q query rows of the group, drawn without replacement."""

    task_type = "regression"
    output_dim = 1

    def __init__(self, table: pd.DataFrame, task_column: str, target_column: str,
                 split_column: str | None, feature_columns: Sequence[str] | None,
                 standardize: bool, split_fractions: Sequence[float], split_seed: int):
        groups = column(table, "task_column", task_column)
        targets = column(table, "target_column", target_column)
        if not pd.api.types.is_numeric_dtype(targets):
            raise UserError(f"dataset.target_column={target_column!r} is not numeric")
        split = column(table, "split_column", split_column)
        used = [name for name in (task_column, target_column, split_column) if name is not None]
        features = feature_matrix(table, feature_columns, used)
        parts = assign_splits(groups, split, "task", split_fractions, split_seed)
        if standardize:
            mean, std = standardizer(features[grouped(features, groups, parts["train"])[0]])
            features = (features - mean) / std
        target_values = targets.to_numpy(np.float32)[:, None]
        self.splits = {}
        for name, keys in parts.items():
            rows, offsets = grouped(features, groups, keys)
            self.splits[name] = (ClassExamples(torch.from_numpy(np.ascontiguousarray(
                features[rows])), offsets, tuple(map(str, keys))),
                torch.from_numpy(target_values[rows]))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.splits["train"][0].example_shape

    def smallest_group(self) -> tuple[str, int]:
        """The name and row count of the smallest task (group), of any split."""
        groups = min((data for data, _ in self.splits.values()),
                     key=lambda data: int(data.counts.min()))
        index = int(groups.counts.argmin())
        return groups.names[index], int(groups.counts[index])

    def check_fits(self, episode: EpisodeSettings, name: str) -> None:
        """A task's support and query rows are distinct rows of its group."""
        group, rows = self.smallest_group()
        needed = episode.k_shot + (episode.train_query_size or episode.query_size)
        if needed > rows:
            raise UserError(f"episode.k_shot + episode.query_size = {needed} is more than the "
                            f"{rows} rows of task {group!r}, the table's smallest; use at most "
                            f"{rows} together")

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
        return TaskBatch(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:])


def feature_table(path: str, label_column: str | None = "label", task_column: str | None = None,
                  target_column: str | None = None, split_column: str | None = None,
                  feature_columns: Sequence[str] | None = None, standardize: bool = False,
                  split_fractions: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
                  min_examples: int | None = None) -> TaskFamily:
    """The tasks of a feature table: regression when `task_column` is given (with
    `target_column`), classification over `label_column` otherwise. See the module docstring."""
    table = read_table(path)
    if task_column is not None or target_column is not None:
        if task_column is None or target_column is None:
            raise UserError("regression tasks need both dataset.task_column and "
                            "dataset.target_column")
        return FeatureRegression(table, task_column, target_column, split_column,
                                 feature_columns, standardize, split_fractions, split_seed)
    if label_column is None:
        raise UserError("dataset.label_column (classification) or dataset.task_column and "
                        "dataset.target_column (regression) must be set")
    return FeatureClassification(table, label_column, split_column, feature_columns,
                                 standardize, split_fractions, split_seed, min_examples)
