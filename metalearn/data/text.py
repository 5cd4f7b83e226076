"""Few-shot text classification: `dataset=text dataset.path=intents.csv`.

A table of texts with their classes, one row each, in a CSV (.csv), TSV (.tsv, .tab), JSON Lines
(.jsonl, .ndjson) or Parquet (.parquet, .pq) file, read as UTF-8; `text_column` and
`label_column` name its columns (defaults `text` and `label`). Texts are read as they are: "NA"
or "null" is a text, not a missing value. N-way K-shot tasks are drawn over the classes, every
class's texts in one of meta-train / meta-val / meta-test, from (in this order):

1. `split_column`: train, val or test in every row (a class's rows share one);
2. `split_file`: a CSV of `class,split` lines, as for an image folder (a class it does not name
   is left out, with a warning);
3. `split_fractions`: the classes shuffled with `split_seed` and cut in these proportions.

The classes are split before anything is left out, so the meta-test classes stay the same
whatever `min_examples`. Then blank texts (empty or white space only) are left out, counted in
one warning line; `min_examples` leaves out the classes with fewer texts (one warning line,
naming them). A class left with fewer texts than an episode takes (episode.k_shot +
episode.query_size) is refused before training, by name.

Texts become rows of token ids (metalearn/data/tokenizers.py): by default a word vocabulary built
from the meta-train texts only (`min_count`, `max_vocabulary`), so no word of the meta-val or
meta-test classes has an id of its own ([UNK]); a pretrained encoder brings its own tokenizer,
and a trained model the vocabulary it was trained with. A text longer than `max_length` tokens is
cut there (one warning line counting them). Each split is stored as int32 [texts, max_length],
zero-padded on the right, and sampled batches are trimmed to their longest text (support and
query together), so the mask of real tokens is `x != 0`.

The tokenised texts are cached in `<data_dir>/text/` (metalearn/data/cache.py), keyed on the
file's SHA-256, the columns, which classes are in each split, the tokenizer (or the vocabulary
settings) and max_length; a file that changes gets a new cache. SHA-256 rather than size and
modification time: the bytes are read anyway (to check that they are UTF-8), hashing them costs
little beside parsing them, and an edit is never missed whatever the file's times say.

A missing column (the file's columns named), bytes that are not UTF-8 (the file and line named)
or a table that cannot be parsed is one line, as every UserError.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from metalearn.data.cache import cached
from metalearn.data.episodes import ClassExamples, ExampleBatch, TaskBatch
from metalearn.data.features import assign_splits, grouped, key_column, role_columns, row_list
from metalearn.data.image_folder import listed, read_split_file
from metalearn.data.task_family import ClassificationTaskFamily
from metalearn.data.tokenizers import (
    SPECIAL_TOKENS,
    Tokenizer,
    WordVocabulary,
    tokenizer_from_state,
)
from metalearn.errors import UserError, check_whole_number

log = logging.getLogger(__name__)
FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".pq": "parquet"}
#: raised whenever the same texts and settings would give other ids (tokenisation, layout);
#: 1: int32 ids [texts, max_length] per split, with the tokenizer's state
CACHE_VERSION = 1


class ClassTexts(NamedTuple):
    """One split's texts, class by class: class c's are texts[offsets[c]:offsets[c + 1]]."""

    texts: list[str]
    offsets: list[int] | np.ndarray | Tensor
    names: tuple[str, ...]


def encoded_rows(tokenizer: Tokenizer, texts: Sequence[str],
                 max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The texts' ids as int32 [texts, max_length] (zero-padded on the right, cut at max_length),
    and each text's whole length in tokens."""
    encoded = tokenizer.encode(texts)
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    kept = np.minimum(lengths, max_length)
    rows = np.zeros((len(encoded), max_length), np.int32)
    # row-major: the kept ids, text after text, fill exactly the cells left of each length
    rows[np.arange(max_length) < kept[:, None]] = np.fromiter(
        (token for ids in encoded for token in ids[:max_length]), np.int32, int(kept.sum()))
    return rows, lengths


def tokenized(splits: dict[str, ClassTexts], tokenizer: Tokenizer | None, max_length: int,
              min_count: int, max_vocabulary: int | None) -> dict:
    """Every split's ids (int32 [texts, max_length]), the tokenizer's state (a word vocabulary
    fitted to the meta-train texts where `tokenizer` is None), and how many texts were cut."""
    if tokenizer is None:
        tokenizer = WordVocabulary.fit(splits["train"].texts, min_count, max_vocabulary)
        log.info("word vocabulary: %s words of the %s meta-train texts (dataset.min_count=%d, "
                 "dataset.max_vocabulary=%s)", f"{tokenizer.vocab_size - len(SPECIAL_TOKENS):,}",
                 f"{len(splits['train'].texts):,}", min_count, max_vocabulary)
    ids, lengths = {}, []
    for name, part in splits.items():
        rows, split_lengths = encoded_rows(tokenizer, part.texts, max_length)
        ids[name] = torch.from_numpy(rows)
        lengths.append(split_lengths)
    lengths = np.concatenate(lengths)
    return {"tokenizer": tokenizer.state(), "ids": ids,
            "texts": len(lengths), "cut": int((lengths > max_length).sum()),
            "longest": int(lengths.max(initial=0))}


def checked_corpus(data: object, key: str, shapes: dict[str, tuple[int, int]]) -> dict:
    """The cache's contents if `tokenized` wrote them for this key, else a ValueError."""
    if not (isinstance(data, dict) and data.get("key") == key
            and isinstance(data.get("ids"), dict)
            and {name: tuple(ids.shape) for name, ids in data["ids"].items()} == shapes
            and all(ids.dtype == torch.int32 for ids in data["ids"].values())):
        raise ValueError("it does not hold the token ids of these texts")
    return data


def longest_text(*ids: Tensor) -> int:
    """The most tokens of any text in `ids` (rows padded with zeros on the right), at least 1."""
    return max([1, *(int(x.ne(0).sum(-1).max()) for x in ids if x.numel())])


class TextClassification(ClassificationTaskFamily):
    """N-way K-shot tasks over classes of texts; see the module docstring.

    Args:
        splits: "train", "val" and "test" texts, class by class.
        tokenizer: the tokenizer to use as it is (a pretrained encoder's, or the vocabulary a
            model was trained with), or None: a word vocabulary fitted to splits["train"].
        max_length: texts are cut to this many tokens.
        min_count, max_vocabulary: of the fitted word vocabulary (see WordVocabulary.fit).
        cache_dir: the tokenised texts are cached in <cache_dir>/text/; None: not cached.
        cache_key: what the splits' texts are made from (a file's SHA-256 and the settings
            that choose its texts; the tokenizer and max_length are added here); None: not
            cached.
        source: the texts' file or dataset, for messages.
    """

    drops_small_classes = True

    def __init__(self, splits: dict[str, ClassTexts], tokenizer: Tokenizer | None,
                 max_length: int, min_count: int, max_vocabulary: int | None,
                 cache_dir: str | None, cache_key: str | None, source: str):
        check_whole_number("dataset.max_length", max_length)
        check_whole_number("dataset.min_count", min_count)
        if max_vocabulary is not None:
            check_whole_number("dataset.max_vocabulary", max_vocabulary)
        build = partial(tokenized, splits, tokenizer, max_length, min_count, max_vocabulary)
        if cache_dir is None or cache_key is None:
            corpus = build()
        else:
            key = json.dumps({"version": CACHE_VERSION, "source": cache_key,
                              "tokenizer": tokenizer.state() if tokenizer is not None else
                              {"fitted": "words", "min_count": min_count,
                               "max_vocabulary": max_vocabulary},
                              "max_length": max_length}, sort_keys=True)
            path = Path(cache_dir) / "text" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"
            shapes = {name: (len(part.texts), max_length) for name, part in splits.items()}
            corpus = cached(path, lambda: {**build(), "key": key},
                            partial(checked_corpus, key=key, shapes=shapes))
        self.encoded_with = (tokenizer if tokenizer is not None
                             else tokenizer_from_state(corpus["tokenizer"]))
        if corpus["cut"]:
            log.warning("dataset.max_length=%d cut %s of %s texts of %s (longest %s tokens)",
                        max_length, f"{corpus['cut']:,}", f"{corpus['texts']:,}", source,
                        f"{corpus['longest']:,}")
        super().__init__({name: ClassExamples(corpus["ids"][name],
                                              torch.as_tensor(part.offsets, dtype=torch.long),
                                              tuple(part.names))
                          for name, part in splits.items()})

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer that made the token ids."""
        return self.encoded_with

    def sample(self, split, shape, batch_size, generator) -> TaskBatch:
        """Episodes drawn as every classification family draws them, trimmed to the batch's
        longest text (support and query together)."""
        batch = super().sample(split, shape, batch_size, generator)
        width = longest_text(batch.support_x, batch.query_x)
        return self.map_images(batch, lambda ids: ids[..., :width].contiguous())

    def labelled_examples(self, split: str, rows: Tensor,
                          generator: torch.Generator) -> ExampleBatch:
        """The texts at `rows`, trimmed to the longest of them."""
        x, y = super().labelled_examples(split, rows, generator)
        return ExampleBatch(x[..., :longest_text(x)].contiguous(), y)


def utf8(data: bytes, path: str) -> str:
    """The file's bytes as text (a leading byte-order mark dropped); bytes that are not UTF-8
    are one line naming the file and the line of the first of them."""
    data = data.removeprefix(b"\xef\xbb\xbf")  # a spreadsheet's byte-order mark
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        line_start = data.rfind(b"\n", 0, error.start) + 1
        before = data[line_start:error.start].decode("utf-8", "replace")[-20:]
        raise UserError(f"dataset.path={path!r}: line {line} "
                        f"holds bytes that are not UTF-8 (0x{data[error.start]:02x} after "
                        f"{before!r}); save the file as UTF-8") from None


def read_text_table(path: str) -> tuple[pd.DataFrame, str]:
    """The table at `path` (texts and other columns read as they are written: "NA" stays
    text), with at least one row, and the SHA-256 of the file's bytes."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"dataset.path={path!r}: no such file")
    kind = FORMATS.get(file.suffix.lower())
    if kind is None:
        raise UserError(f"dataset.path={path!r}: the texts must be in one of "
                        f"{', '.join(FORMATS)}")
    data = file.read_bytes()
    try:
        if kind == "parquet":
            table = pd.read_parquet(io.BytesIO(data))
        elif kind == "jsonl":
            table = pd.read_json(io.StringIO(utf8(data, path)), lines=True, dtype=False,
                                 convert_dates=False)
        else:
            table = pd.read_csv(io.StringIO(utf8(data, path)), sep="\t" if kind == "tsv" else ",",
                                dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"dataset.path={path!r} cannot be read as a table: {message}") from None
    if len(table) == 0:
        raise UserError(f"dataset.path={path!r}: the table has no rows (its columns: "
                        f"{', '.join(map(str, table.columns))})")
    return table, hashlib.sha256(data).hexdigest()


def missing(value: object) -> bool:
    """None or NaN: what JSON Lines and Parquet files hold for an absent value."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def class_keys(table: pd.DataFrame, path: str, key: str, name: str | None) -> pd.Series | None:
    """A column that sorts the rows (labels, splits) as strings without surrounding white space;
    a blank or missing value is refused, naming its rows."""
    if name is None:
        return None
    values = table[name].map(lambda value: None if missing(value) else str(value).strip() or None)
    return key_column(pd.DataFrame({name: values}), path, key, name)


def read_texts(values: pd.Series) -> np.ndarray:
    """The texts of a column, as strings ("" where a value is missing)."""
    return np.array(["" if missing(value) else str(value) for value in values], dtype=object)


def class_splits(labels: pd.Series, split: pd.Series | None, split_file: str | None,
                 fractions: Sequence[float], seed: int, path: str) -> dict[str, list[str]]:
    """split -> its classes, sorted: from the split column, the split file or the fractions."""
    if split_file is None:
        return assign_splits(labels, split, "label", fractions, seed)
    classes = sorted(labels.unique().tolist())
    parts = read_split_file(Path(split_file).expanduser(), classes,
                            lambda name: f"not a label of {path}", "classes")
    return {name: sorted(part) for name, part in parts.items()}


def without_small_classes(parts: dict[str, list[str]], counts: pd.Series,
                          min_examples: int) -> dict[str, list[str]]:
    """The classes with at least `min_examples` texts (`counts`: texts per class); those left out
    named in one warning line."""
    small = [name for part in parts.values() for name in part if counts.get(name, 0) < min_examples]
    if small:
        log.warning("dataset.min_examples=%d leaves out %d classes (%s texts): %s", min_examples,
                    len(small), f"{sum(counts.get(name, 0) for name in small):,}",
                    listed([f"{name} ({counts.get(name, 0)})" for name in small]))
    kept = {split: [name for name in part if counts.get(name, 0) >= min_examples]
            for split, part in parts.items()}
    empty = [split for split, part in kept.items() if not part]
    if empty:
        raise UserError(f"dataset.min_examples={min_examples} leaves no class in the {empty[0]} "
                        "split")
    return kept


def text_table(path: str, text_column: str = "text", label_column: str = "label",
               split_column: str | None = None, split_file: str | None = None,
               split_fractions: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
               min_examples: int | None = None, max_length: int = 64, min_count: int = 1,
               max_vocabulary: int | None = None, data_dir: str | None = None,
               tokenizer: Tokenizer | None = None) -> TextClassification:
    """The text classification tasks of a table of texts (`dataset=text`); see the module
    docstring. `tokenizer`: the one to use as it is (a pretrained encoder's, or the vocabulary a
    model was trained with); None fits a word vocabulary to the meta-train texts. `data_dir`:
    where the tokenised texts are cached (None: not cached)."""
    if min_examples is not None:
        check_whole_number("dataset.min_examples", min_examples)
    if split_column is not None and split_file is not None:
        raise UserError("dataset.split_column and dataset.split_file both assign the classes to "
                        "splits; set one of them to null")
    table, digest = read_text_table(path)
    role_columns(text_column=text_column, label_column=label_column, split_column=split_column)
    for key, name in (("text_column", text_column), ("label_column", label_column),
                      ("split_column", split_column)):
        if name is not None and name not in table.columns:
            raise UserError(f"dataset.{key}={name!r} is not a column of {path}; its columns are: "
                            f"{', '.join(map(str, table.columns))}")
    labels = class_keys(table, path, "label_column", label_column)
    split = class_keys(table, path, "split_column", split_column)
    parts = class_splits(labels, split, split_file, split_fractions, split_seed, path)
    texts = read_texts(table[text_column])
    blank = np.array([not text.strip() for text in texts], dtype=bool)
    if blank.any():
        log.warning("dataset.path=%s: left out %d blank texts (empty or white space only) of %d "
                    "classes, at %s", path, int(blank.sum()), labels[blank].nunique(),
                    row_list(blank))
        texts, labels = texts[~blank], labels[~blank]
    if min_examples is not None:
        parts = without_small_classes(parts, labels.value_counts(), min_examples)
    splits = {}
    for name, classes in parts.items():
        rows, offsets = grouped(labels, classes)
        splits[name] = ClassTexts(texts[rows].tolist(), offsets, tuple(classes))
    cache_key = json.dumps({"sha256": digest, "text_column": text_column,
                            "label_column": label_column, "classes": parts})
    return TextClassification(splits, tokenizer, max_length, min_count, max_vocabulary,
                              data_dir, cache_key, path)
