"""dataset=wordnet: synsets as classes, their direct hyponyms' definitions as examples, read from
small data files written here in the published format (wndb(5WN): a licence header, true byte
offsets, hexadecimal word counts, pointers), and from the real WordNet 3.0 zip where it is."""

from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch

from metalearn.data.episodes import TaskShape
from metalearn.data.text import TextClassification
from metalearn.data.wordnet import (
    LEXICOGRAPHER_FILES,
    LEXICOGRAPHER_SPLITS,
    DataFile,
    definition,
    definition_splits,
    find_data_file,
    wordnet,
)
from metalearn.errors import UserError

REAL_ROOT = Path(os.environ.get("METALEARN_WORDNET",
                                Path(__file__).resolve().parents[2] / "shared/datasets/wordnet"))
REAL_ZIP = REAL_ROOT / "wordnet-3.0-dict.zip"
LICENCE = ("  1 This software and database is being provided to you, the LICENSEE, by  \n"
           "  2 Princeton University under the following license.  By obtaining, using  \n")
LEX = {name: number for number, name in enumerate(LEXICOGRAPHER_FILES)}


def synset(key, lexfile, words, gloss, hyponyms=(), instances=(), hypernym=None):
    """A synset to write: its pointers name other synsets by key."""
    pointers = [("~", h) for h in hyponyms] + [("~i", h) for h in instances]
    if hypernym is not None:
        pointers.append(("@", hypernym))
    return key, LEX[lexfile], words, pointers, gloss


def data_file(synsets: list, letter: str = "n") -> bytes:
    """A data file as WordNet publishes it: the licence header, then one synset a line whose
    first field is its byte offset; pointers hold the offsets of their targets."""
    def line(offset_of, key, lex, words, pointers, gloss):
        word_fields = " ".join(f"{word} {lex_id:x}" for lex_id, word in enumerate(words))
        pointer_fields = "".join(f" {symbol} {offset_of[target]:08d} {letter} 0000"
                                 for symbol, target in pointers)
        frames = " 01 + 02 00" if letter == "v" else ""  # a verb's sentence frames
        return (f"{offset_of[key]:08d} {lex:02d} {letter} {len(words):02x} {word_fields} "
                f"{len(pointers):03d}{pointer_fields}{frames} | {gloss}  \n")

    # an offset is always 8 digits, so each line's length is known before the offsets are
    placeholder = {key: 0 for key, *_ in synsets}
    offset_of, at = {}, len(LICENCE.encode())
    for entry in synsets:
        offset_of[entry[0]] = at
        at += len(line(placeholder, *entry).encode())
    return (LICENCE + "".join(line(offset_of, *entry) for entry in synsets)).encode()


def nouns() -> list:
    """mathematician (noun.person, two hyponyms and an instance hyponym), dog (noun.animal),
    tree (noun.plant), dish (noun.food), and a synset with two hyponyms (below 3)."""
    return [
        synset("mathematician", "noun.person", ["mathematician"], "a person skilled in "
               "mathematics", ["algebraist", "geometer"], ["euclid"]),
        synset("algebraist", "noun.person", ["algebraist"], "a mathematician whose specialty "
               "is algebra", hypernym="mathematician"),
        synset("geometer", "noun.person", ["geometer", "geometrician"], 'a Mathematician '
               'specializing in geometry; "a geometer of note"', hypernym="mathematician"),
        synset("euclid", "noun.person", ["Euclid"], "Greek geometer who taught mathematicians: "
               '"Euclid\'s Elements"'),
        synset("dog", "noun.animal", ["dog", "domestic_dog"], "a member of the genus Canis",
               ["puppy", "pooch", "husky"]),
        synset("puppy", "noun.animal", ["puppy"], "a young dog"),
        synset("pooch", "noun.animal", ["pooch"], "domestic dogs kept as pets;"),
        synset("husky", "noun.animal", ["husky"], "a dogsled animal (not a DOG's pet)"),
        synset("tree", "noun.plant", ["tree"], "a tall perennial woody plant",
               ["oak", "palm", "bonsai"]),
        synset("oak", "noun.plant", ["oak", "oak_tree"], "a tree of the genus Quercus"),
        synset("palm", "noun.plant", ["palm"], 'unbranched trees, as in "palm trees"; "palms"'),
        synset("bonsai", "noun.plant", ["bonsai"], "a dwarfed ornamental tree"),
        synset("dish", "noun.food", ["dish", "dish_of_food"], "a particular item of prepared food",
               ["stew", "curry", "salad"]),
        synset("stew", "noun.food", ["stew"], "food prepared by stewing"),
        synset("curry", "noun.food", ["curry"], "a dish of food of Indian origin; spicy"),
        synset("salad", "noun.food", ["salad"], "food mixtures served cold"),
        synset("box", "noun.artifact", ["box"], "a container", ["crate", "carton"]),
        synset("crate", "noun.artifact", ["crate"], "a box made of slats"),
        synset("carton", "noun.artifact", ["carton"], "a box made of cardboard"),
    ]


def verbs() -> list:
    return [
        synset("move", "verb.motion", ["move", "travel"], "change location",
               ["run", "crawl", "creep"]),
        synset("run", "verb.motion", ["run"], 'move fast by using one\'s feet; "Don\'t run!"'),
        synset("crawl", "verb.motion", ["crawl"], "moved slowly on hands and knees, traveling"),
        synset("creep", "verb.motion", ["creep"], "a moving slowly"),
        synset("touch", "verb.contact", ["touch"], "make physical contact with",
               ["tap", "pat", "brush"]),
        synset("tap", "verb.contact", ["tap"], "touch lightly"),
        synset("pat", "verb.contact", ["pat"], "touch lightly and repeatedly"),
        synset("brush", "verb.contact", ["brush"], "touch lightly and briefly"),
        synset("talk", "verb.communication", ["talk"], "exchange thoughts",
               ["chat", "whisper", "mutter"]),
        synset("chat", "verb.communication", ["chat"], "talk socially"),
        synset("whisper", "verb.communication", ["whisper"], "speak softly"),
        synset("mutter", "verb.communication", ["mutter"], "talk indistinctly"),
    ]


@pytest.fixture
def noun_root(tmp_path) -> Path:
    (tmp_path / "data.noun").write_bytes(data_file(nouns()))
    return tmp_path


def classes_of(splits) -> dict[str, list[str]]:
    """class name -> its texts, over every split."""
    return {name: list(part.texts[part.offsets[c]:part.offsets[c + 1]])
            for part in splits.values() for c, name in enumerate(part.names)}


def by_word(classes: dict[str, list[str]]) -> dict[str, list[str]]:
    """The classes by their first word (names end with the synset's offset)."""
    return {name.split(".")[0]: texts for name, texts in classes.items()}


def test_the_generated_file_is_in_the_published_format():
    data = data_file(nouns())
    lines = data.split(b"\n")
    assert lines[0].startswith(b"  1 This software")
    for line in lines[2:-1]:
        offset = int(line[:8])
        assert data[offset:offset + len(line)] == line  # the first field is its byte offset
    assert b" 02 dog 0 domestic_dog 1 003 ~ " in data  # word count in hex, pointers


def test_classes_are_synsets_and_examples_their_hyponyms_definitions(noun_root):
    data = (noun_root / "data.noun").read_bytes()
    splits = definition_splits(DataFile(noun_root / "data.noun", None), min_examples=3,
                               mask_class_words=False, split="lexicographer",
                               lexicographer_splits={"train": None, "val": ["noun.food"],
                                                     "test": ["noun.animal", "noun.plant"]})
    classes = classes_of(splits)
    assert by_word(classes) == {
        # ~ and ~i both count; a gloss's examples are cut at `; "` and `: "`
        "mathematician": ["a mathematician whose specialty is algebra",
                          "a Mathematician specializing in geometry",
                          "Greek geometer who taught mathematicians"],
        "dog": ["a young dog", "domestic dogs kept as pets", "a dogsled animal (not a DOG's pet)"],
        "tree": ["a tree of the genus Quercus", 'unbranched trees, as in "palm trees"',
                 "a dwarfed ornamental tree"],
        "dish": ["food prepared by stewing", "a dish of food of Indian origin; spicy",
                 "food mixtures served cold"],
    }  # box, with two hyponyms, is no class
    for name in classes:  # named by first word, pos and byte offset
        word, pos, offset = name.split(".")
        assert pos == "n" and data[int(offset):].startswith(f"{offset} ".encode())
        assert data[int(offset):].split(b"\n")[0].split()[4] == word.encode()


@pytest.mark.parametrize(("gloss", "expected"), [
    ('a person who paints; "he was a painter"; "painters"', "a person who paints"),
    ("female of cattle: \"`moo-cow' is a child's term\"", "female of cattle"),
    ('promise of reward as in "carrot and stick"; "the carrot of housing"',
     'promise of reward as in "carrot and stick"'),
    ("petrels; fulmars; shearwaters;", "petrels; fulmars; shearwaters"),
    ("a round vessel; used for food", "a round vessel; used for food"),
])
def test_a_definition_is_the_gloss_without_its_examples(gloss, expected):
    assert definition(gloss) == expected


def test_class_words_are_masked_whole_word_in_their_own_examples(noun_root, caplog):
    with caplog.at_level(logging.INFO, logger="metalearn.data.wordnet"):
        splits = definition_splits(find_data_file(str(noun_root), "noun"), min_examples=3,
                                   split="lexicographer",
                                   lexicographer_splits={"train": None, "val": ["noun.food"],
                                                         "test": ["noun.animal", "noun.plant"]})
    classes = by_word(classes_of(splits))
    assert classes["mathematician"] == ["a [MASK] whose specialty is algebra",
                                        "a [MASK] specializing in geometry",
                                        "Greek geometer who taught [MASK]"]  # any case; plural
    # a multi-word lemma is one mask; "dogsled" is not the word dog; the class's words only
    assert classes["dog"] == ["a young [MASK]", "[MASK] kept as pets",
                              "a dogsled animal (not a [MASK]'s pet)"]
    assert classes["tree"] == ["a [MASK] of the genus Quercus", 'unbranched [MASK], as in "palm '
                               '[MASK]"', "a dwarfed ornamental [MASK]"]
    assert classes["dish"][1] == "a [MASK] of Indian origin; spicy"  # the longest lemma first
    # 3 + 3 + 3 + 1 of the 12 definitions named their class
    assert "12 definitions (min_examples=3); 10 definitions (83.3%) name their class" in caplog.text


def test_verbs_are_classes_of_troponyms_with_their_regular_forms_masked(tmp_path):
    (tmp_path / "dict").mkdir()
    (tmp_path / "dict" / "data.verb").write_bytes(data_file(verbs(), "v"))
    splits = definition_splits(find_data_file(str(tmp_path), "verb"), pos="verb",
                               min_examples=3, split="random", split_fractions=[1, 1, 1])
    classes = by_word(classes_of(splits))
    assert sorted(classes) == ["move", "talk", "touch"]
    assert classes["move"] == ["[MASK] fast by using one's feet",
                             "[MASK] slowly on hands and knees, [MASK]", "a [MASK] slowly"]


def test_the_database_is_found_as_a_folder_a_dict_folder_or_a_zip(tmp_path):
    data = data_file(nouns())
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "data.noun").write_bytes(data)
    (tmp_path / "dict" / "dict").mkdir(parents=True)
    (tmp_path / "dict" / "dict" / "data.noun").write_bytes(data)
    (tmp_path / "zip").mkdir()
    with zipfile.ZipFile(tmp_path / "zip" / "wordnet-3.0-dict.zip", "w") as archive:
        archive.writestr("dict/index.noun", "not read")
        archive.writestr("dict/data.noun", data)
    found = [find_data_file(str(tmp_path / folder), "noun") for folder in ("flat", "dict", "zip")]
    assert [file.read() for file in found] == [data] * 3
    assert str(found[2]).endswith("wordnet-3.0-dict.zip:dict/data.noun")


def test_a_missing_database_says_where_to_get_it_and_what_points_to_it(tmp_path):
    with pytest.raises(UserError) as error:
        find_data_file(str(tmp_path), "noun")
    message = str(error.value)
    assert "\n" not in message
    for part in ("dataset.root", "METALEARN_WORDNET", "wordnet.princeton.edu/download",
                 "nltk.downloader wordnet", "apt install wordnet-base", str(tmp_path)):
        assert part in message


@pytest.mark.parametrize(("edit", "message"), [
    (lambda data: data.replace(b" 003 ~ ", b" 004 ~ ", 1), "data.noun line 3 is not a WordNet "
                                                           "data line"),
    (lambda data: data + b"99999999 05 n 01 cat 0 003 ~ 00000001 n 0000 ~ 00000002 n 0000 "
                         b"~ 00000003 n 0000 | a cat  \n",
     "synset 99999999 points to hyponym 00000001, which is not in the file"),
])
def test_a_broken_data_file_is_one_line_naming_it(tmp_path, edit, message):
    (tmp_path / "data.noun").write_bytes(edit(data_file(nouns())))
    with pytest.raises(UserError, match=message) as error:
        definition_splits(find_data_file(str(tmp_path), "noun"), min_examples=3)
    assert "\n" not in str(error.value)


def many_classes(count: int) -> list:
    """`count` classes of three hyponyms, class i in lexicographer file number 4 + i % 3."""
    entries = []
    for i in range(count):
        lexfile = LEXICOGRAPHER_FILES[4 + i % 3]
        members = [f"member{i}x{j}" for j in range(3)]
        entries.append(synset(f"class{i}", lexfile, [f"class{i}"], "a class", members))
        entries += [synset(m, lexfile, [m], f"definition {m}") for m in members]
    return entries


def test_random_splits_are_seeded_disjoint_and_cut_by_the_fractions(tmp_path):
    (tmp_path / "data.noun").write_bytes(data_file(many_classes(20)))
    file = find_data_file(str(tmp_path), "noun")

    def names(seed):
        splits = definition_splits(file, min_examples=3, split_seed=seed)
        return {split: set(part.names) for split, part in splits.items()}

    first = names(0)
    assert [len(first[s]) for s in ("train", "val", "test")] == [13, 3, 4]  # 12.8, 3.2, 4
    assert {n.split(".")[0] for n in set.union(*first.values())} == {f"class{i}" for i in range(20)}
    assert sum(map(len, first.values())) == 20  # disjoint
    assert names(0) == first and names(1) != first


def test_lexicographer_splits_hold_the_classes_of_their_semantic_fields(tmp_path):
    (tmp_path / "data.noun").write_bytes(data_file(many_classes(9)))
    file = find_data_file(str(tmp_path), "noun")
    splits = definition_splits(file, min_examples=3, split="lexicographer", lexicographer_splits={
        "train": None, "val": ["noun.animal", "verb.motion"], "test": ["noun.artifact"]})
    words = {split: {int(n.split(".")[0][5:]) for n in part.names} for split, part in
             splits.items()}  # class i is in file 4 + i % 3: act, animal, artifact
    assert words == {"train": {0, 3, 6}, "val": {1, 4, 7}, "test": {2, 5, 8}}
    explicit = definition_splits(file, min_examples=3, split="lexicographer",
                                 lexicographer_splits={"train": ["noun.animal"],
                                                       "val": ["noun.act"],
                                                       "test": ["noun.artifact"]})
    assert {int(n.split(".")[0][5:]) for n in explicit["train"].names} == {1, 4, 7}


@pytest.mark.parametrize(("lexicographer_splits", "message"), [
    ({"train": None, "val": ["noun.act"], "test": ["noun.act"]},
     "lists noun.act in both val and test; a lexicographer file is in one split"),
    ({"train": None, "val": ["noun.animals"], "test": ["noun.act"]},
     "dataset.lexicographer_splits.val names 'noun.animals', not a lexicographer file"),
    ({"train": None, "val": ["noun.plant"], "test": ["noun.act"]},
     "dataset.lexicographer_splits.val holds no noun class with at least 3 definitions"),
    ({"train": None, "val": "noun.act", "test": ["noun.animal"]},
     "dataset.lexicographer_splits.val='noun.act' must be a list"),
])
def test_bad_lexicographer_splits_are_one_line(tmp_path, lexicographer_splits, message):
    (tmp_path / "data.noun").write_bytes(data_file(many_classes(9)))
    with pytest.raises(UserError, match=message) as error:
        definition_splits(find_data_file(str(tmp_path), "noun"), min_examples=3,
                          split="lexicographer", lexicographer_splits=lexicographer_splits)
    assert "\n" not in str(error.value)


def test_wordnet_builds_a_cached_text_task_family(tmp_path):
    (tmp_path / "data.noun").write_bytes(data_file(many_classes(20)))
    family = wordnet(str(tmp_path), min_examples=3, max_length=8, data_dir=str(tmp_path / "data"))
    assert isinstance(family, TextClassification) and family.input_shape == (8,)
    assert [family.num_classes(s) for s in ("train", "val", "test")] == [13, 3, 4]
    assert family.tokenizer.tokens[:3] == ["[PAD]", "[UNK]", "[MASK]"]
    (cache,) = (tmp_path / "data" / "text").glob("*.pt")
    batch = family.sample("test", TaskShape(2, 1, 1), 4, torch.Generator().manual_seed(0))
    assert batch.support_x.shape[:2] == (4, 2) and batch.support_x.dtype == torch.int64
    again = wordnet(str(tmp_path), min_examples=3, max_length=8, data_dir=str(tmp_path / "data"))
    assert list((tmp_path / "data" / "text").glob("*.pt")) == [cache]
    assert again.tokenizer.tokens == family.tokenizer.tokens
    wordnet(str(tmp_path), min_examples=3, mask_class_words=False, max_length=8,
            data_dir=str(tmp_path / "data"))  # another setting, another cache
    assert len(list((tmp_path / "data" / "text").glob("*.pt"))) == 2


real = pytest.mark.skipif(not REAL_ZIP.is_file(), reason=f"the WordNet 3.0 zip is not at "
                          f"{REAL_ZIP} (set METALEARN_WORDNET to its folder)")


@real
def test_the_real_nouns_give_623_classes_of_29877_definitions(caplog):
    file = find_data_file(str(REAL_ROOT), "noun")
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="metalearn.data.wordnet"):
        splits = definition_splits(file)
    seconds = time.perf_counter() - start
    assert seconds < 10, seconds  # about a second; the whole file is parsed every run
    assert sum(len(part.names) for part in splits.values()) == 623
    assert sum(len(part.texts) for part in splits.values()) == 29877
    assert [len(splits[s].names) for s in ("train", "val", "test")] == [399, 100, 124]
    classes = classes_of(splits)
    mathematician = classes["mathematician.n.10301261"]
    assert len(mathematician) == 56  # 7 hyponyms and 49 instances (Abel, ...)
    assert "a [MASK] whose specialty is algebra" in mathematician
    assert "Norwegian [MASK] (1802-1829)" in mathematician
    assert "any of several American evergreen [MASK]" in classes["oak.n.12268246"]
    assert ("623 classes of 29,877 definitions (min_examples=20); 16,909 definitions (56.6%) "
            "name their class, masked") in caplog.text


@real
def test_the_real_lexicographer_split_tests_on_fields_never_trained_on():
    file = find_data_file(str(REAL_ROOT), "noun")
    splits = definition_splits(file, mask_class_words=False, split="lexicographer")
    assert [len(splits[s].names) for s in ("train", "val", "test")] == [471, 58, 94]
    assert "a mathematician whose specialty is algebra" in classes_of(
        {"train": splits["train"]})["mathematician.n.10301261"]
    verbs = definition_splits(find_data_file(str(REAL_ROOT), "verb"), pos="verb",
                              split="lexicographer", lexicographer_splits=LEXICOGRAPHER_SPLITS)
    assert [len(verbs[s].names) for s in ("train", "val", "test")] == [42, 14, 21]
    assert sum(len(part.texts) for part in verbs.values()) == 3447
