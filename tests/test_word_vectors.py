"""Word vectors from text files (metalearn/models/word_vectors.py) into the word embeddings of
the trainable text encoders, checked against hand-written files."""

from __future__ import annotations

import gzip
import logging

import pytest
import torch

from metalearn.data.tokenizers import Tokenizer, WordVocabulary
from metalearn.models.text_encoders import BagOfEmbeddings, TextCNN
from metalearn.models.word_vectors import read_word_vectors
from tests.helpers import user_error

VOCABULARY = WordVocabulary.fit(["the dog sees the cat", "a cat in new york"])
# words by id: [PAD] [UNK] [MASK] cat the a dog in new sees york


def ids(*words: str) -> list[int]:
    return [VOCABULARY.tokens.index(word) for word in words]


def write(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_glove_file_gives_its_vectors_to_the_vocabularys_words(tmp_path, caplog):
    path = write(tmp_path / "glove.txt", [
        "the 0.1 0.2 0.3",
        "dog -1 2.5 3e-1",
        "zebra 9 9 9",       # not in the vocabulary
        "new york 4 5 6",    # GloVe words may hold spaces: the last 3 fields are the values
        "cat 7 8 9",
    ])
    with caplog.at_level(logging.INFO):
        found, vectors = read_word_vectors(path, VOCABULARY, 3)
    assert found.tolist() == sorted(ids("the", "dog", "cat"))
    rows = dict(zip(found.tolist(), vectors.tolist()))
    assert rows[ids("dog")[0]] == pytest.approx([-1, 2.5, 0.3])
    assert rows[ids("cat")[0]] == pytest.approx([7, 8, 9])
    lines = [r.getMessage() for r in caplog.records if "backbone.vectors" in r.getMessage()]
    assert len(lines) == 1 and "vectors for 3 of 8 words (38%) from glove.txt" in lines[0]


def test_word2vec_header_and_case_folding_prefer_the_exact_word(tmp_path):
    path = write(tmp_path / "cased.vec", [
        "5 2",
        "The 1 1",    # only a cased "The": "the" takes it
        "Dog 2 2",    # "Dog" first, then "dog": the exact word wins
        "dog 3 3",
        "CAT 4 4",    # two cased forms: the first (most frequent) wins
        "Cat 5 5",
    ])
    found, vectors = read_word_vectors(path, VOCABULARY, 2)
    rows = dict(zip(found.tolist(), vectors[:, 0].tolist()))
    assert rows == {ids("the")[0]: 1, ids("dog")[0]: 3, ids("cat")[0]: 4}


def test_gzipped_files_are_read(tmp_path):
    path = tmp_path / "vectors.vec.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("1 2\ncat 0.5 -0.5\n")
    found, vectors = read_word_vectors(str(path), VOCABULARY, 2)
    assert found.tolist() == ids("cat") and vectors.tolist() == [[0.5, -0.5]]


def test_encoders_start_from_the_files_vectors_and_random_rows_of_their_scale(tmp_path):
    torch.manual_seed(0)
    words = {word: torch.randn(64) * 0.3 for word in ("the", "dog", "cat", "sees")}
    path = write(tmp_path / "glove.txt", [
        f"{word} " + " ".join(f"{v:.6f}" for v in vector) for word, vector in words.items()])
    for frozen in (False, True):
        model = TextCNN((8,), VOCABULARY, embedding_dim=64, vectors=path,
                        freeze_embeddings=frozen)
        table = model.embedding.weight.detach()
        for word, vector in words.items():
            torch.testing.assert_close(table[ids(word)[0]], vector, atol=1e-6, rtol=0)
        assert table[0].eq(0).all()  # padding
        others = table[ids("a", "in", "new", "york") + [1, 2]]  # and [UNK], [MASK]
        assert 0.2 < others.std() < 0.4  # random, at the file's scale (0.3), not N(0, 1)
        assert ("embedding.weight" in dict(model.named_parameters())) != frozen


class Pieces(Tokenizer):
    """A tokenizer without word tokens, as the pretrained ones."""

    kind, vocab_size = "wordllama", 10

    def encode(self, texts):
        return [[1] for _ in texts]

    def state(self):
        return {"kind": self.kind}


def test_bad_vector_files_are_one_line_errors_naming_backbone_vectors(tmp_path):
    missing = tmp_path / "glove.6B.100d.txt"
    assert f"backbone.vectors={missing} is not a file" in user_error(
        lambda: read_word_vectors(str(missing), VOCABULARY, 100))
    cut_line = write(tmp_path / "cut.txt", ["the 1 2 3", "cat 1 2"])
    assert "line 2 has 2 of 3 values" in user_error(
        lambda: read_word_vectors(cut_line, VOCABULARY, 3))
    cut_file = write(tmp_path / "cut.vec", ["4 3", "the 1 2 3", "cat 1 2 3"])
    assert "announces 4 vectors on its first line and holds 2" in user_error(
        lambda: read_word_vectors(cut_file, VOCABULARY, 3))
    wide = write(tmp_path / "wide.txt", ["the 1 2 3 4"])
    assert ("holds vectors of 4 values and backbone.embedding_dim=3; set "
            "backbone.embedding_dim=4") in user_error(
        lambda: BagOfEmbeddings((8,), VOCABULARY, embedding_dim=3, vectors=wide))
    header_wide = write(tmp_path / "wide.vec", ["1 300", "the 1 2"])
    assert "holds vectors of 300 values and backbone.embedding_dim=2" in user_error(
        lambda: read_word_vectors(header_wide, VOCABULARY, 2))
    not_numbers = write(tmp_path / "words.txt", ["the 1 x 3"])
    assert "line 1 holds a value that is not a number" in user_error(
        lambda: read_word_vectors(not_numbers, VOCABULARY, 3))
    empty = write(tmp_path / "empty.txt", [])
    assert "is empty" in user_error(lambda: read_word_vectors(empty, VOCABULARY, 3))
    binary = tmp_path / "vectors.bin"
    binary.write_bytes(b"2 3\nthe \xff\xfe\x00\x80\x81\x82\x83\x84\x85\x86\x87\x88\n")
    assert "is not UTF-8 text; binary word2vec files (.bin) are not read" in user_error(
        lambda: read_word_vectors(str(binary), VOCABULARY, 3))
    broken_gzip = tmp_path / "vectors.vec.gz"
    broken_gzip.write_bytes(gzip.compress(b"1 2\ncat 0.5 -0.5\n")[:-12])
    assert f"backbone.vectors={broken_gzip} cannot be read" in user_error(
        lambda: read_word_vectors(str(broken_gzip), VOCABULARY, 2))
    good = write(tmp_path / "good.txt", ["the 1 2 3"])
    assert "the wordllama tokenizer has no word vocabulary; set backbone.vectors=null" in (
        user_error(lambda: BagOfEmbeddings((8,), Pieces(), embedding_dim=3, vectors=good)))
