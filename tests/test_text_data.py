"""Tables of texts as few-shot tasks (`dataset=text`): every format read to the same token ids,
the vocabulary built from meta-train texts only, batches trimmed to their longest text, the
cache of tokenised texts, and each mistake in the data as one line."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch

from metalearn.data.episodes import TaskShape, seeded_generator
from metalearn.data.task_family import ClassificationTaskFamily, EpisodeSettings
from metalearn.data.text import text_table
from metalearn.data.tokenizers import WordVocabulary
from metalearn.errors import UserError

SHAPE = TaskShape(2, 2, 3)


def intents(classes: int = 10, per_class: int = 8, seed: int = 0) -> pd.DataFrame:
    """Texts of 1-11 words: class c's own words c<c>w0..3 among words every class shares."""
    rng = np.random.default_rng(seed)
    shared = ["please", "the", "my", "?"]
    rows = []
    for c in range(classes):
        words = [f"c{c}w{i}" for i in range(4)] + shared
        for _ in range(per_class):
            rows.append({"text": " ".join(rng.choice(words, size=rng.integers(1, 12))),
                         "label": f"intent_{c}"})
    return pd.DataFrame(rows)


def with_split_column(frame: pd.DataFrame) -> pd.DataFrame:
    """`part`: intent_0-5 train, intent_6-7 val, the others test."""
    number = frame.label.str.removeprefix("intent_").astype(int)
    return frame.assign(part=np.where(number < 6, "train", np.where(number < 8, "val", "test")))


def write(frame: pd.DataFrame, path) -> str:
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path)
    return str(path)


def one_line_error(make) -> str:
    with pytest.raises(UserError) as caught:
        make()
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# Reading -----------------------------------------------------------------------------------------
def test_csv_tsv_json_lines_and_parquet_give_the_same_token_ids(tmp_path):
    frame = with_split_column(intents())
    frame.loc[0, "text"] = "NA"  # a text, not a missing value
    frame.loc[1, "text"] = 'null, "quoted"\tand tabbed'
    families = [text_table(write(frame, tmp_path / f"t{suffix}"), split_column="part")
                for suffix in (".csv", ".tsv", ".jsonl", ".parquet")]
    first = families[0]
    assert "na" in first.tokenizer.tokens and "null" in first.tokenizer.tokens
    for family in families[1:]:
        assert family.tokenizer.tokens == first.tokenizer.tokens
        for split in ("train", "val", "test"):
            ours, theirs = family.splits[split], first.splits[split]
            assert ours.names == theirs.names
            assert torch.equal(ours.offsets, theirs.offsets)
            assert torch.equal(ours.examples, theirs.examples)


def test_token_ids_are_each_texts_words_padded_with_zeros(tmp_path):
    frame = intents()
    family = text_table(write(frame, tmp_path / "t.csv"), max_length=16)
    assert family.input_shape == (16,) and family.augment is None
    # an independent reference: the vocabulary of the meta-train classes' texts, row by row
    train = family.splits["train"]
    train_texts = [text for name in train.names for text in frame.text[frame.label == name]]
    vocabulary = WordVocabulary.fit(train_texts)
    assert family.tokenizer.tokens == vocabulary.tokens
    for split in ("train", "test"):
        part = family.splits[split]
        texts = [text for name in part.names for text in frame.text[frame.label == name]]
        assert part.examples.dtype == torch.int32 and part.examples.shape == (len(texts), 16)
        for row, text in zip(part.examples.tolist(), texts):
            ids = vocabulary.encode([text])[0]
            assert row == ids + [0] * (16 - len(ids))


def test_no_word_of_the_val_and_test_classes_gets_an_id_but_unk(tmp_path):
    frame = with_split_column(intents(classes=10))
    family = text_table(write(frame, tmp_path / "t.csv"), split_column="part")
    assert family.splits["test"].names == ("intent_8", "intent_9")
    tokens = family.tokenizer.tokens
    assert not [token for token in tokens if token.startswith(("c6", "c7", "c8", "c9"))]
    assert "c0w0" in tokens and "please" in tokens
    for split in ("val", "test"):
        part = family.splits[split]
        texts = [text for name in part.names for text in frame.text[frame.label == name]]
        for row, text in zip(part.examples.tolist(), texts):
            expected = [1 if word.startswith("c") else tokens.index(word)
                        for word in text.split()]
            assert row[:len(expected)] == expected and not any(row[len(expected):])


# Batches -----------------------------------------------------------------------------------------
def test_batches_are_trimmed_to_their_longest_text_and_otherwise_the_same(tmp_path):
    family = text_table(write(intents(), tmp_path / "t.csv"), max_length=40)
    for split in ("train", "test"):
        trimmed = family.sample(split, SHAPE, 4, seeded_generator(3))
        whole = ClassificationTaskFamily.sample(family, split, SHAPE, 4, seeded_generator(3))
        width = trimmed.support_x.shape[-1]
        assert 1 <= width < 40 and trimmed.query_x.shape[-1] == width
        assert trimmed.support_x.dtype == torch.int64
        both = torch.cat([whole.support_x.flatten(0, 1), whole.query_x.flatten(0, 1)])
        assert both[:, width - 1].any() and not both[:, width:].any()
        for got, full in zip(trimmed, whole):
            assert torch.equal(got, full[..., :width] if got.dim() == 3 else full)
    rows = torch.tensor([0, 5, 9, 30])
    examples = family.labelled_examples("train", rows, seeded_generator(1))
    full = ClassificationTaskFamily.labelled_examples(family, "train", rows, seeded_generator(1))
    width = examples.x.shape[1]
    assert full.x[:, width - 1].any() and not full.x[:, width:].any()
    assert torch.equal(examples.x, full.x[:, :width]) and torch.equal(examples.y, full.y)


def test_the_same_file_and_seed_give_the_same_batches(tmp_path):
    path = write(intents(), tmp_path / "t.csv")
    first, second = text_table(path), text_table(path, data_dir=str(tmp_path / "data"))
    for split in ("train", "val", "test"):
        a = first.sample(split, SHAPE, 3, seeded_generator(7))
        b = second.sample(split, SHAPE, 3, seeded_generator(7))
        assert all(torch.equal(x, y) for x, y in zip(a, b))


# The cache ---------------------------------------------------------------------------------------
def test_the_tokenised_texts_are_cached_and_rebuilt_when_the_file_or_a_setting_changes(
        tmp_path, monkeypatch):
    import metalearn.data.text as text

    builds = []
    build = text.tokenized
    monkeypatch.setattr(text, "tokenized", lambda *args: builds.append(1) or build(*args))
    data_dir = str(tmp_path / "data")
    path = write(intents(), tmp_path / "t.csv")
    first = text_table(path, data_dir=data_dir)
    again = text_table(path, data_dir=data_dir)
    assert len(builds) == 1 and len(os.listdir(tmp_path / "data" / "text")) == 1
    assert again.tokenizer.tokens == first.tokenizer.tokens
    assert all(torch.equal(again.splits[s].examples, first.splits[s].examples)
               for s in ("train", "val", "test"))
    text_table(path, data_dir=data_dir, max_length=20)
    assert len(builds) == 2
    changed = intents()
    changed.loc[0, "text"] = "a text that was edited"
    stat = os.stat(path)
    write(changed, tmp_path / "t.csv")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the edit is noticed all the same
    edited = text_table(path, data_dir=data_dir)
    assert len(builds) == 3
    assert not all(torch.equal(edited.splits[s].examples, first.splits[s].examples)
                   for s in ("train", "val", "test"))
    text_table(path)  # no data_dir: no cache
    text_table(path)
    assert len(builds) == 5


def test_a_given_tokenizer_is_used_as_it_is_and_has_its_own_cache(tmp_path):
    path = write(intents(), tmp_path / "t.csv")
    data_dir = str(tmp_path / "data")
    fitted = text_table(path, data_dir=data_dir)
    given = WordVocabulary(["[PAD]", "[UNK]", "[MASK]", "please"])
    family = text_table(path, data_dir=data_dir, tokenizer=given)
    assert family.tokenizer is given and fitted.tokenizer.vocab_size > 4
    ids = family.splits["train"].examples
    assert set(ids.unique().tolist()) <= {0, 1, 3} and (ids == 3).any()


# What is left out, and what is said --------------------------------------------------------------
def test_long_texts_are_cut_at_max_length_and_counted_once(tmp_path, caplog):
    frame = intents()
    frame.loc[[0, 17], "text"] = ["the " * 30, "my " * 25]
    path = write(frame, tmp_path / "t.csv")
    with caplog.at_level(logging.WARNING):
        family = text_table(path, max_length=12, data_dir=str(tmp_path / "data"))
    assert caplog.text.count("dataset.max_length") == 1
    assert f"dataset.max_length=12 cut 2 of 80 texts of {path} (longest 30 tokens)" in caplog.text
    assert family.splits["train"].examples.shape[1] == 12
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        text_table(path, max_length=12, data_dir=str(tmp_path / "data"))  # from the cache
    assert "dataset.max_length=12 cut 2 of 80 texts" in caplog.text


def test_blank_texts_are_left_out_and_counted(tmp_path, caplog):
    frame = intents()
    frame.loc[[3, 4, 20], "text"] = ["", "  \t ", "\n"]
    path = write(frame, tmp_path / "t.csv")
    with caplog.at_level(logging.WARNING):
        family = text_table(path)
    assert ("left out 3 blank texts (empty or white space only) of 2 classes, at rows 3, 4, 20 "
            "(3 of 80, counting from 0)") in caplog.text
    counts = {name: int(count) for part in family.splits.values()
              for name, count in zip(part.names, part.counts)}
    assert counts["intent_0"] == 6 and counts["intent_2"] == 7 and counts["intent_1"] == 8
    assert sum(counts.values()) == 77


def test_a_class_too_small_for_the_episode_is_named(tmp_path):
    frame = intents()
    frame.loc[frame.label == "intent_3", "text"] = ["x", "y", "", " ", "", "", "", ""]
    family = text_table(write(frame, tmp_path / "t.csv"))
    message = one_line_error(lambda: family.check_fits(EpisodeSettings(2, 1, 2), "text"))
    assert message == ("episode.k_shot + episode.query_size = 1 + 2 = 3 is more than the 2 "
                       "examples of text's class 'intent_3', its smallest; use at most 2 "
                       "together, or leave out the classes that small with dataset.min_examples")
    family.check_fits(EpisodeSettings(2, 1, 1), "text")
    emptied = intents()
    emptied.loc[emptied.label == "intent_3", "text"] = ""  # every text blank: still a class
    family = text_table(write(emptied, tmp_path / "e.csv"))
    assert "the 0 examples of text's class 'intent_3'" in one_line_error(
        lambda: family.check_fits(EpisodeSettings(2, 1, 1), "text"))


def test_min_examples_leaves_out_small_classes_and_keeps_the_others_splits(tmp_path, caplog):
    frame = intents(per_class=8)
    frame = frame.drop(frame.index[(frame.label == "intent_5")][:5])  # 3 texts left
    path = write(frame, tmp_path / "t.csv")
    whole = text_table(path)
    with caplog.at_level(logging.WARNING):
        family = text_table(path, min_examples=4)
    assert "dataset.min_examples=4 leaves out 1 classes (3 texts): intent_5 (3)" in caplog.text
    for split in ("train", "val", "test"):
        assert family.splits[split].names == tuple(
            name for name in whole.splits[split].names if name != "intent_5")
    assert "intent_5" in sum((list(part.names) for part in whole.splits.values()), [])


def test_a_split_file_assigns_the_classes_it_names(tmp_path, caplog):
    path = write(intents(classes=7), tmp_path / "t.csv")
    split_file = tmp_path / "splits.csv"
    split_file.write_text("class,split\nintent_0,train\nintent_1,train\nintent_2,train\n"
                          "intent_3,val\nintent_4,val\nintent_5,test\nintent_6,test\n")
    family = text_table(path, split_file=str(split_file))
    assert {s: p.names for s, p in family.splits.items()} == {
        "train": ("intent_0", "intent_1", "intent_2"), "val": ("intent_3", "intent_4"),
        "test": ("intent_5", "intent_6")}
    split_file.write_text("intent_0,train\nintent_1,train\nintent_3,val\nintent_5,test\n")
    with caplog.at_level(logging.WARNING):
        family = text_table(path, split_file=str(split_file))
    assert family.splits["train"].names == ("intent_0", "intent_1")
    assert "names no split for 3 classes, left out: intent_2, intent_4, intent_6" in \
        caplog.text


# Mistakes ----------------------------------------------------------------------------------------
def test_each_mistake_in_the_texts_is_one_line(tmp_path):
    frame = intents()
    path = write(frame, tmp_path / "t.csv")
    blank_label = frame.copy()
    blank_label.loc[[2, 9], "label"] = " "
    mixed = frame.assign(part=["train"] * 3 + ["val"] * 5 + ["test"] * (len(frame) - 8))
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\nhello,a\nbye,b\ncaf\u00e9 au lait,c\n".encode("latin-1"))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\nhi,a\nhi,a,b\n")
    (tmp_path / "t.xlsx").write_text("")
    (tmp_path / "empty.csv").write_text("text,label\n")
    cases = [
        (lambda: text_table(path, text_column="utterance"),
         f"dataset.text_column='utterance' is not a column of {path}; its columns are: text, "
         "label"),
        (lambda: text_table(path, label_column="intent"),
         f"dataset.label_column='intent' is not a column of {path}; its columns are: text, "
         "label"),
        (lambda: text_table(str(latin1)),
         f"dataset.path='{latin1}': line 4 holds bytes that are not UTF-8 (0xe9 after 'caf'); "
         "save the file as UTF-8"),
        (lambda: text_table(write(blank_label, tmp_path / "b.csv")),
         "dataset.label_column='label' is blank in "),
        (lambda: text_table(write(mixed, tmp_path / "m.csv"), split_column="part"),
         "the rows of label 'intent_0' are in several splits (train, val)"),
        (lambda: text_table(path, split_column="label", split_file="s.csv"),
         "dataset.split_column and dataset.split_file both assign the classes to splits"),
        (lambda: text_table(path, label_column="text"),
         "dataset.text_column and dataset.label_column both name 'text'"),
        (lambda: text_table(str(ragged)), f"dataset.path='{ragged}' cannot be read as a table: "),
        (lambda: text_table(str(tmp_path / "t.xlsx")),
         f"dataset.path='{tmp_path / 't.xlsx'}': the texts must be in one of .csv, .tsv, "),
        (lambda: text_table(str(tmp_path / "none.csv")),
         f"dataset.path='{tmp_path / 'none.csv'}': no such file"),
        (lambda: text_table(str(tmp_path / "empty.csv")), "dataset.path="),
        (lambda: text_table(path, max_length=0), "dataset.max_length=0 must be a whole number"),
        (lambda: text_table(path, min_examples=100),
         "dataset.min_examples=100 leaves no class in the train split"),
    ]
    for make, message in cases:
        got = one_line_error(make)
        assert got.startswith(message), (message, got)
