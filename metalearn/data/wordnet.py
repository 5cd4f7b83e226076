"""WordNet definitions as a many-class text task family: `dataset=wordnet`.

A class is a WordNet 3.0 synset (a noun, or with `pos=verb` a verb), its examples the definitions
of its direct hyponyms (noun pointers `~` hyponym and `~i` instance hyponym; a verb's `~` are its
troponyms); synsets with at least `min_examples` of them are the classes. At 20 the nouns give
623 classes of 29,877 definitions, about Omniglot's shape. A class is named by its synset's first
word, part of speech and byte offset, e.g. `mathematician.n.10301261`.

The database is read in its published text format (wndb(5WN)): one synset a line of `data.noun`
or `data.verb`, `offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt pointer... [frames]
| gloss`, each pointer `symbol offset pos source/target`; lines starting with two spaces are the
licence header. `root` is a folder holding `wordnet-3.0-dict.zip` (read without unpacking), its
`dict/` folder, or the data files themselves (NLTK's corpora/wordnet, Debian's /usr/share/wordnet).

A definition is the gloss up to its first example sentence (the first `;` or `:` followed by a
double quote), without a trailing `;`. Definitions often name their class ("a mathematician whose
specialty is algebra" under `mathematician`); with `mask_class_words` every whole-word,
case-insensitive occurrence of one of the class's own words in its examples (a noun's regular
plural too, a verb's regular -s, -ed and -ing forms) becomes the tokenizer's mask text, a
multi-word word one mask, so that a class is learned from what its members are rather than from
its name. How many definitions named their class is logged: that share of the task is string
matching when nothing is masked.

Splits (`split`): "random" shuffles the classes with `split_seed` and cuts them by
`split_fractions`; "lexicographer" splits them by their synset's lexicographer file (its semantic
field: noun.person, noun.animal, ...), `lexicographer_splits` naming the files of each split
(train: null, every file that val and test do not name), so meta-test is on fields never
meta-trained on. Files of the other part of speech are ignored, so one setting serves both.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from metalearn.data.features import assign_splits
from metalearn.data.task_family import SPLITS
from metalearn.data.text import ClassTexts, TextClassification
from metalearn.data.tokenizers import Tokenizer, WordVocabulary
from metalearn.errors import UserError, check_whole_number

log = logging.getLogger(__name__)

ROOT_ENV = "METALEARN_WORDNET"
ZIP_NAMES = ("wordnet-3.0-dict.zip", "wordnet.zip")  # Princeton's dict/ zipped; NLTK's download
WHERE_TO_GET = ("https://wordnet.princeton.edu/download (WordNet-3.0.tar.gz, folder dict/), "
                "`python -m nltk.downloader wordnet` (~/nltk_data/corpora/wordnet) or "
                "`apt install wordnet-base` (/usr/share/wordnet)")
POS_LETTERS = {"noun": "n", "verb": "v"}
HYPONYM_POINTERS = {"noun": ("~", "~i"), "verb": ("~",)}
SPLIT_KINDS = ("random", "lexicographer")
# lex_filenum -> lexicographer file, as lexnames(5WN) lists them
LEXICOGRAPHER_FILES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)
# At min_examples=20: nouns 471 / 58 / 94 classes (test: animals and plants; val: food, body
# parts, natural objects), verbs 42 / 14 / 21 (test: contact and motion).
LEXICOGRAPHER_SPLITS = {
    "train": None,
    "val": ["noun.food", "noun.body", "noun.object", "verb.communication", "verb.possession"],
    "test": ["noun.animal", "noun.plant", "verb.contact", "verb.motion"],
}
EXAMPLE_START = re.compile(r'[;:]\s*"')  # a gloss's first quoted example sentence
ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # data.adj's syntactic markers: big(a)


class Synset(NamedTuple):
    lexfile: str
    words: tuple[str, ...]  # as the file spells them: "physical_entity"
    hyponyms: tuple[int, ...]  # offsets of its direct hyponyms
    gloss: str


class WordNetClass(NamedTuple):
    name: str  # first word, part of speech, offset: "mathematician.n.10301261"
    lexfile: str
    lemmas: tuple[str, ...]  # its words as text: "physical entity"
    definitions: list[str]


class DataFile(NamedTuple):
    """`data.<pos>`: a file, or a member of a zip archive."""

    path: Path
    member: str | None

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"

    def read(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(self.member)

    def identity(self) -> dict:
        """What changes when the file is replaced: its name, size and modification time."""
        stat = self.path.stat()
        return {"file": str(self), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def find_data_file(root: str, pos: str) -> DataFile:
    """`data.<pos>` in `root`, in `root/dict/`, or inside a WordNet zip in `root` (or `root`
    itself a zip)."""
    name = f"data.{pos}"
    folder = Path(root).expanduser()
    for path in (folder / name, folder / "dict" / name):
        if path.is_file():
            return DataFile(path, None)
    archives = [folder] if folder.suffix == ".zip" else [folder / z for z in ZIP_NAMES]
    for archive in archives:
        if archive.is_file():
            return DataFile(archive, zip_member(archive, name))
    raise UserError(f"the WordNet 3.0 database is not in dataset.root={root!r} (set by "
                    f"{ROOT_ENV}): none of {name}, dict/{name}, {', '.join(ZIP_NAMES)} is there; "
                    f"get it from {WHERE_TO_GET}, and set dataset.root or {ROOT_ENV} to its "
                    "folder")


def zip_member(archive: Path, name: str) -> str:
    """The member of `archive` named `name` in any folder (dict/data.noun, wordnet/data.noun)."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = [m for m in opened.namelist() if m.rsplit("/", 1)[-1] == name]
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{archive} is not a readable zip ({error}); replace it with the "
                        f"published one, from {WHERE_TO_GET}") from None
    if not members:
        raise UserError(f"{archive} holds no {name}; a WordNet 3.0 archive holds dict/{name} "
                        f"(get it from {WHERE_TO_GET})")
    return min(members)


def read_synsets(data: bytes, source: str, pos: str) -> dict[int, Synset]:
    """offset -> synset, for every line of a data file but its licence header."""
    symbols = HYPONYM_POINTERS[pos]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{source} is not a text file ({error}); replace it with the published "
                        "one") from None
    synsets = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("  "):
            continue
        try:
            offset, synset = parse_line(line, symbols, POS_LETTERS[pos])
        except (ValueError, IndexError):
            raise UserError(f"{source} line {number} is not a WordNet data line (offset "
                            "lex_filenum ss_type w_cnt words p_cnt pointers | gloss): "
                            f"{line[:60]!r}; replace the file with the published one") from None
        synsets[offset] = synset
    return synsets


def parse_line(line: str, symbols: tuple[str, ...], letter: str) -> tuple[int, Synset]:
    """One synset line of a data file (wndb(5WN)); frames after the pointers (verbs) are not
    needed. A malformed line raises ValueError or IndexError."""
    head, bar, gloss = line.partition(" | ")
    fields = head.split()
    word_count = int(fields[3], 16)
    at = 4 + 2 * word_count
    pointer_count = int(fields[at])
    pointers = fields[at + 1:at + 1 + 4 * pointer_count]
    if not bar or len(pointers) != 4 * pointer_count:
        raise ValueError("truncated line")
    hyponyms = tuple(int(pointers[i + 1]) for i in range(0, len(pointers), 4)
                     if pointers[i] in symbols and pointers[i + 2] == letter)
    return int(fields[0]), Synset(LEXICOGRAPHER_FILES[int(fields[1])],
                                  tuple(fields[4:at:2]), hyponyms, gloss.strip())


def definition(gloss: str) -> str:
    """The gloss without its example sentences: up to the first `;` or `:` that a double quote
    follows, without a trailing `;`."""
    example = EXAMPLE_START.search(gloss)
    return (gloss[:example.start()] if example else gloss).strip().rstrip(";").rstrip()


def lemma(word: str) -> str:
    """A word of a synset as text: underscores become spaces, an adjective marker goes."""
    return ADJECTIVE_MARKER.sub("", word).replace("_", " ")


def definition_classes(synsets: dict[int, Synset], source: str, pos: str,
                       min_examples: int) -> list[WordNetClass]:
    """Every synset with at least `min_examples` direct hyponyms, with their definitions."""
    classes = []
    for offset, synset in synsets.items():
        if len(synset.hyponyms) < min_examples:
            continue
        missing = [h for h in synset.hyponyms if h not in synsets]
        if missing:
            raise UserError(f"{source}: synset {offset:08d} points to hyponym {missing[0]:08d}, "
                            "which is not in the file; replace the file with the published one")
        classes.append(WordNetClass(
            f"{synset.words[0]}.{POS_LETTERS[pos]}.{offset:08d}", synset.lexfile,
            tuple(lemma(word) for word in synset.words),
            [definition(synsets[h].gloss) for h in synset.hyponyms]))
    return classes


def regular_forms(word: str, pos: str) -> set[str]:
    """A noun and its regular plural; a verb and its regular -s, -ed and -ing forms."""
    consonant_y = re.search(r"[^aeiou]y$", word) is not None
    if word.endswith(("s", "x", "z", "ch", "sh")):
        third = word + "es"
    else:
        third = word[:-1] + "ies" if consonant_y else word + "s"
    forms = {word, third}
    if pos == "verb":
        stem = word[:-1] if word.endswith("e") else word
        forms |= {word[:-1] + "ied" if consonant_y else stem + "ed", stem + "ing"}
    return forms


def class_word_pattern(lemmas: Sequence[str], pos: str) -> re.Pattern:
    """Whole-word, case-insensitive occurrences of the lemmas and their regular forms (a noun's
    last word inflected, a verb's first), longest first so a multi-word lemma is one match."""
    forms = set()
    for text in lemmas:
        words = text.split()
        at = -1 if pos == "noun" else 0
        forms |= {" ".join([*words[:at], form]) if at == -1 else " ".join([form, *words[1:]])
                  for form in regular_forms(words[at], pos)}
    alternatives = [r"\s+".join(map(re.escape, form.split()))
                    for form in sorted(forms, key=lambda f: (-len(f), f))]
    return re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)", re.IGNORECASE)


def masked_class_words(wordnet_class: WordNetClass, pos: str,
                       mask_text: str) -> tuple[list[str], int]:
    """The class's definitions with its own words masked, and how many named one."""
    pattern = class_word_pattern(wordnet_class.lemmas, pos)
    masked, named = [], 0
    for text in wordnet_class.definitions:
        text, count = pattern.subn(mask_text, text)
        masked.append(text)
        named += count > 0
    return masked, named


def random_parts(classes: list[WordNetClass], fractions: Sequence[float],
                 seed: int) -> dict[str, list[str]]:
    """split -> class names: shuffled with `seed`, cut by `fractions`."""
    return assign_splits(pd.Series([c.name for c in classes]), None, "synset", fractions, seed)


def lexicographer_parts(classes: list[WordNetClass], pos: str, min_examples: int,
                        lexicographer_splits: Mapping) -> dict[str, list[str]]:
    """split -> class names, by the lexicographer files `lexicographer_splits` lists for it."""
    key = "dataset.lexicographer_splits"
    unknown = set(lexicographer_splits) - set(SPLITS)
    if unknown:
        raise UserError(f"{key} has {sorted(unknown)[0]!r}; its keys are {', '.join(SPLITS)}")
    listed = {}
    for split in SPLITS:
        files = lexicographer_splits.get(split)
        if files is None and split == "train":
            continue
        if isinstance(files, str) or not isinstance(files, Sequence):
            raise UserError(f"{key}.{split}={files!r} must be a list of lexicographer files "
                            f"(e.g. [noun.animal]){', or null' if split == 'train' else ''}")
        for name in files:
            if name not in LEXICOGRAPHER_FILES:
                raise UserError(f"{key}.{split} names {name!r}, not a lexicographer file; the "
                                f"{pos} files are: {', '.join(own_files(pos))}")
            if name in listed:
                raise UserError(f"{key} lists {name} in both {listed[name]} and {split}; a "
                                "lexicographer file is in one split")
            listed[name] = split
    files_of = {split: {name for name, s in listed.items() if s == split} for split in SPLITS}
    if lexicographer_splits.get("train") is None:
        files_of["train"] = set(own_files(pos)) - set(listed)
    parts = {split: sorted(c.name for c in classes if c.lexfile in files_of[split])
             for split in SPLITS}
    left_out = len(classes) - sum(map(len, parts.values()))
    if left_out:
        log.info("%s leaves out %d of %d classes: their lexicographer files are in no split",
                 key, left_out, len(classes))
    for split, names in parts.items():
        if not names:
            counts = Counter(c.lexfile for c in classes).most_common()
            raise UserError(
                f"{key}.{split} holds no {pos} class with at least {min_examples} definitions "
                f"(dataset.min_examples); the classes per lexicographer file: "
                f"{', '.join(f'{name} {count}' for name, count in counts)}")
    return parts


def own_files(pos: str) -> list[str]:
    return [name for name in LEXICOGRAPHER_FILES if name.startswith(f"{pos}.")]


def definition_splits(data_file: DataFile, pos: str = "noun", min_examples: int = 20,
                      mask_class_words: bool = True, split: str = "random",
                      split_fractions: Sequence[float] = (0.64, 0.16, 0.20), split_seed: int = 0,
                      lexicographer_splits: Mapping = LEXICOGRAPHER_SPLITS,
                      mask_text: str = "[MASK]") -> dict[str, ClassTexts]:
    """split -> the definitions of its classes (classes sorted by name). See the module
    docstring."""
    check_settings(pos, min_examples, split)
    source = str(data_file)
    classes = definition_classes(read_synsets(data_file.read(), source, pos), source, pos,
                                 min_examples)
    if not classes:
        raise UserError(f"no {pos} synset of {source} has {min_examples} direct hyponyms "
                        f"(dataset.min_examples={min_examples}); lower it")
    named, texts_of = 0, {}
    for wordnet_class in classes:
        masked, count = masked_class_words(wordnet_class, pos, mask_text)
        named += count
        texts_of[wordnet_class.name] = masked if mask_class_words else wordnet_class.definitions
    total = sum(map(len, texts_of.values()))
    log.info("WordNet %ss (%s): %d classes of %s definitions (min_examples=%d); %s definitions "
             "(%.1f%%) name their class, %s", pos, source, len(classes), f"{total:,}",
             min_examples, f"{named:,}", 100 * named / total,
             "masked" if mask_class_words else "kept (dataset.mask_class_words=false)")
    if split == "random":
        parts = random_parts(classes, split_fractions, split_seed)
    else:
        parts = lexicographer_parts(classes, pos, min_examples, lexicographer_splits)
    splits = {}
    for name, names in parts.items():
        texts, offsets = [], [0]
        for class_name in names:
            texts += texts_of[class_name]
            offsets.append(len(texts))
        splits[name] = ClassTexts(texts, offsets, tuple(names))
    log.info("split=%s: %s classes of %s definitions (meta-train / meta-val / meta-test)",
             split, " / ".join(str(len(splits[s].names)) for s in SPLITS),
             " / ".join(f"{len(splits[s].texts):,}" for s in SPLITS))
    return splits


def check_settings(pos: str, min_examples: int, split: str) -> None:
    if pos not in POS_LETTERS:
        raise UserError(f"dataset.pos={pos!r} must be one of: {', '.join(POS_LETTERS)}")
    check_whole_number("dataset.min_examples", min_examples)
    if split not in SPLIT_KINDS:
        raise UserError(f"dataset.split={split!r} must be one of: {', '.join(SPLIT_KINDS)}")


def plain(value):
    """A config's lists and mappings (OmegaConf's too) as JSON-able Python values."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


def wordnet(root: str, pos: str = "noun", min_examples: int = 20, mask_class_words: bool = True,
            split: str = "random", split_fractions: Sequence[float] = (0.64, 0.16, 0.20),
            split_seed: int = 0, lexicographer_splits: Mapping = LEXICOGRAPHER_SPLITS,
            max_length: int = 64, min_count: int = 1, max_vocabulary: int | None = None,
            data_dir: str | None = None, tokenizer: Tokenizer | None = None) -> TextClassification:
    """N-way K-shot tasks over WordNet definitions (`dataset=wordnet`); see the module
    docstring. The tokenised splits are cached in `data_dir`, rebuilt when the database file
    or a setting changes."""
    check_settings(pos, min_examples, split)
    data_file = find_data_file(root, pos)
    mask_text = (WordVocabulary if tokenizer is None else tokenizer).mask_text
    settings = plain({"pos": pos, "min_examples": min_examples,
                      "mask_class_words": mask_class_words, "mask_text": mask_text,
                      "split": split, "split_fractions": split_fractions,
                      "split_seed": split_seed, "lexicographer_splits": lexicographer_splits})
    splits = definition_splits(data_file, **settings)
    cache_key = json.dumps({"dataset": "wordnet", **data_file.identity(), **settings},
                           sort_keys=True)
    return TextClassification(splits, tokenizer, max_length, min_count, max_vocabulary, data_dir,
                              cache_key, str(data_file))
