"""Pretrained word vectors for a word vocabulary, read from the standard text formats.

GloVe's files hold one word per line followed by its values, separated by single spaces;
fastText's `.vec` and word2vec's text format are the same with a first line "count dim". Either
may be gzipped (`.gz`). Only the vocabulary's words are kept, so a file of millions of vectors
costs one pass over its lines and memory for the vocabulary alone.

A file word matches a vocabulary word as it is, or else once normalised as the vocabulary
normalises its words (NFKC, lower case): a cased fastText file gives "paris" the vector of
"paris" if it has one, else of the first "Paris" (files list frequent words first). The special
tokens ([PAD], [UNK], [MASK]) never take a vector. What is found is logged in one line; the
rest of the vocabulary keeps its random initialisation.
"""

from __future__ import annotations

import gzip
import logging
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import Tensor

from metalearn.data.tokenizers import SPECIAL_TOKENS, Tokenizer
from metalearn.errors import UserError

log = logging.getLogger(__name__)

KEY = "backbone.vectors"
FORMATS = "a word-vector text file (GloVe, fastText .vec or word2vec text format, maybe .gz)"


def normalised(word: str) -> str:
    """A file's word as the word vocabulary writes its words."""
    return unicodedata.normalize("NFKC", word).lower()


@contextmanager
def text_lines(file: Path) -> Iterator[TextIO]:
    opened = (gzip.open(file, "rt", encoding="utf-8") if file.suffix == ".gz"
              else open(file, encoding="utf-8"))
    with opened as lines:
        yield lines


def header(fields: list[str]) -> tuple[int, int] | None:
    """(count, dim) of a fastText / word2vec first line; None for GloVe's (a vector)."""
    if len(fields) == 2 and all(field.isdigit() for field in fields):
        return int(fields[0]), int(fields[1])
    return None


def read_word_vectors(path: str, tokenizer: Tokenizer, dim: int) -> tuple[Tensor, Tensor]:
    """(ids [k], vectors [k, dim]): the vectors the file at `path` holds for the tokenizer's
    words. One-line UserErrors name backbone.vectors for a missing, unreadable or truncated file,
    vectors of another width than `dim` (backbone.embedding_dim), and a tokenizer without words."""
    if tokenizer.tokens is None:
        raise UserError(f"{KEY}={path} gives vectors to words, and the {tokenizer.kind} "
                        "tokenizer has no word vocabulary; set backbone.vectors=null")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{KEY}={path} is not a file; give the path of {FORMATS}, or null for "
                        "random word embeddings")
    ids = {word: index for index, word in enumerate(tokenizer.tokens)
           if index >= len(SPECIAL_TOKENS)}
    exact: dict[int, np.ndarray] = {}  # the vocabulary's word itself
    folded: dict[int, np.ndarray] = {}  # the first file word that normalises to it
    number, count, lines_read = 0, None, 0
    try:
        with text_lines(file) as lines:
            for number, line in enumerate(lines, start=1):
                fields = line.rstrip().split(" ")
                if number == 1:
                    count, width = header(fields) or (None, len(fields) - 1)
                    if width != dim:
                        raise UserError(
                            f"{KEY}={path} holds vectors of {width} values and "
                            f"backbone.embedding_dim={dim}; set backbone.embedding_dim={width}")
                    if count is not None:
                        continue
                if fields == [""]:
                    continue  # a blank line
                lines_read += 1
                if len(fields) < dim + 1:
                    raise UserError(
                        f"{KEY}={path} line {number} has {len(fields) - 1} of {dim} values: "
                        "the file is truncated or damaged; download it again")
                word = " ".join(fields[:-dim])  # a few GloVe words hold spaces
                index = ids.get(word)
                if index is not None:
                    if index not in exact:
                        exact[index] = values(fields[-dim:], path, number)
                    continue
                index = ids.get(normalised(word))
                if index is not None and index not in folded:
                    folded[index] = values(fields[-dim:], path, number)
    except UnicodeDecodeError:
        raise UserError(
            f"{KEY}={path} is not UTF-8 text; binary word2vec files (.bin) are "
            "not read: save them as text (gensim: KeyedVectors.save_word2vec_format(path, "
            "binary=False))") from None
    except (EOFError, gzip.BadGzipFile, OSError) as error:
        raise UserError(f"{KEY}={path} cannot be read ({error}); it must be {FORMATS}") from None
    if number == 0:
        raise UserError(f"{KEY}={path} is empty; it must be {FORMATS}")
    if count is not None and lines_read < count:
        raise UserError(f"{KEY}={path} announces {count} vectors on its first line and holds "
                        f"{lines_read}: the file is truncated; download it again")
    found = {**folded, **exact}
    words = len(tokenizer.tokens) - len(SPECIAL_TOKENS)
    log.info("%s: vectors for %s of %s words (%.0f%%) from %s; the others start random", KEY,
             f"{len(found):,}", f"{words:,}", 100 * len(found) / max(words, 1), file.name)
    order = sorted(found)
    vectors = (np.stack([found[index] for index in order]) if order
               else np.zeros((0, dim), dtype=np.float32))
    return torch.tensor(order, dtype=torch.long), torch.from_numpy(vectors)


def values(fields: Sequence[str], path: str, number: int) -> np.ndarray:
    try:
        return np.array(fields, dtype=np.float32)
    except ValueError:
        raise UserError(f"{KEY}={path} line {number} holds a value that is not a number; the "
                        f"file must be {FORMATS}") from None
