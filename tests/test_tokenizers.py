"""metalearn's word vocabulary: the tokenisation its docstring documents, ids by count, the
special tokens, and the state a checkpoint stores."""

from __future__ import annotations

import json

import pytest

from metalearn.data.tokenizers import WordVocabulary, tokenizer_from_state, word_tokens
from metalearn.errors import UserError


@pytest.mark.parametrize("text,tokens", [
    ("Don't stop!", ["don", "'", "t", "stop", "!"]),
    ("ＨＥＬＬＯ  wor_ld42\tok", ["hello", "wor_ld42", "ok"]),  # NFKC: full-width letters
    ("ﬁne café", ["fine", "café"]),  # NFKC: the ligature; accented letters are word letters
    ("a [MASK] b", ["a", "[MASK]", "b"]),
    ("x[MASK][MASK]y", ["x", "[MASK]", "[MASK]", "y"]),
    ("[mask]", ["[", "mask", "]"]),  # only the mask text itself is the mask
    ("", []),
    (" \t\n", []),
])
def test_texts_are_cut_into_lower_case_words_and_punctuation(text, tokens):
    assert word_tokens(text) == tokens


def test_ids_pad_unk_mask_then_words_by_count_ties_alphabetical():
    vocabulary = WordVocabulary.fit(["c b a", "a b", "a [MASK]", "d c"])
    # counts: a 3, b 2, c 2 (c seen first), d 1; the mask is not a word of the vocabulary
    assert vocabulary.tokens == ["[PAD]", "[UNK]", "[MASK]", "a", "b", "c", "d"]
    assert vocabulary.vocab_size == 7
    assert vocabulary.encode(["A zebra [MASK] d", "", "[MASK]"]) == [[3, 1, 2, 6], [], [2]]


def test_min_count_and_max_size_keep_the_most_frequent_words():
    texts = ["a a a b b c", "c d"]  # a 3, b 2, c 2, d 1
    assert WordVocabulary.fit(texts, min_count=2).tokens[3:] == ["a", "b", "c"]
    assert WordVocabulary.fit(texts, max_size=2).tokens[3:] == ["a", "b"]
    assert WordVocabulary.fit(texts, min_count=3, max_size=2).tokens[3:] == ["a"]
    assert WordVocabulary.fit(texts, min_count=2).encode(["d c"]) == [[1, 5]]


def test_every_id_is_at_least_one_so_zero_is_always_padding():
    vocabulary = WordVocabulary.fit(["alpha beta", "gamma"])
    ids = vocabulary.encode(["alpha, beta? delta [MASK] gamma!", "never seen"])
    assert all(1 <= token < vocabulary.vocab_size for row in ids for token in row)


def test_the_state_is_json_and_rebuilds_the_same_vocabulary():
    vocabulary = WordVocabulary.fit(["one two two", "three"])
    state = json.loads(json.dumps(vocabulary.state()))
    rebuilt = tokenizer_from_state(state)
    assert isinstance(rebuilt, WordVocabulary) and rebuilt.kind == "words"
    assert rebuilt.tokens == vocabulary.tokens
    texts = ["two one four", "three [MASK]"]
    assert rebuilt.encode(texts) == vocabulary.encode(texts)


def test_a_vocabulary_without_the_special_tokens_or_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="starts with"):
        WordVocabulary(["a", "b"])
    with pytest.raises(UserError) as caught:
        tokenizer_from_state({"kind": "letters"})
    assert str(caught.value).startswith("the stored tokenizer is of kind 'letters'")
