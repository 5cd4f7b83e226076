"""Tokenizers: texts to rows of token ids, the input of every text encoder.

Every tokenizer gives ids >= 1, so that 0 is always padding (a text's row is zero-padded on the
right, and a mask of its tokens is `ids != 0`). Its `state()` is a small JSON-able dict stored in
checkpoints; `tokenizer_from_state` rebuilds the tokenizer from it, so a model is evaluated on
exactly the ids it was trained on.

metalearn's own tokenizer is a word vocabulary (`WordVocabulary`, kind "words"). A text becomes
tokens in four steps, the same on every machine (no locale, no model files):

1. Unicode NFKC normalisation (a full-width "Ａ" becomes "A", the ligature "ﬁ" becomes "fi");
2. every "[MASK]" in the text is one mask token (the text a masked class word is replaced by);
3. lower case;
4. the rest is cut into words and punctuation: each run of letters, digits and underscores is
   one token, each other character but white space is one token of its own
   (`re.findall(r"\\w+|[^\\w\\s]", text)`: "Don't!" is "don", "'", "t", "!").

The ids are 0 "[PAD]", 1 "[UNK]" (every word not in the vocabulary), 2 "[MASK]", then the
vocabulary's words by how often they occur, most often first, ties in alphabetical order. The
vocabulary is built (`WordVocabulary.fit`) from the meta-train texts only: a word that only the
meta-val or meta-test texts hold is [UNK], so nothing of the test classes leaks into training.
`min_count` leaves out rarer words, `max_size` keeps only the most frequent words (the three
special tokens not counted).

The pretrained encoders' tokenizers (metalearn/models/pretrained_text.py) shift their own ids by
one: WordLlama's LLaMA-2 tokenizer (kind "wordllama", the file inside the installed `wordllama`
package, read with `tokenizers` without importing the package, whose import needs numpy 2), and
a local Hugging Face model folder's (kind "pretrained", read with transformers, offline).
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from metalearn.errors import UserError

PAD, UNK, MASK = "[PAD]", "[UNK]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, MASK)
UNKNOWN_ID, MASK_ID = 1, 2
WORD = re.compile(r"\w+|[^\w\s]")


class Tokenizer(ABC):
    """Texts to token ids >= 1 (0 is padding).

    Attributes:
        kind: "words", "wordllama" or "pretrained": which class `tokenizer_from_state` builds.
        vocab_size: ids are 0..vocab_size - 1, 0 being padding.
        tokens: id -> token of a word vocabulary (tokens[0] == "[PAD]"); None for pretrained ones.
        mask_text: the text a masked class word is replaced by before encoding.
    """

    kind: str
    vocab_size: int
    tokens: list[str] | None = None
    mask_text: str = MASK

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids (>= 1), whole: no truncation, no padding, no special tokens added."""

    @abstractmethod
    def state(self) -> dict:
        """What rebuilds this tokenizer (JSON-able, with "kind"): see tokenizer_from_state."""


def words(text: str) -> list[str]:
    """The tokens of a text without a mask (steps 3 and 4 of the module docstring)."""
    return WORD.findall(text.lower())


def word_tokens(text: str) -> list[str]:
    """The tokens of a text (see the module docstring), "[MASK]" for each mask."""
    pieces = unicodedata.normalize("NFKC", text).split(MASK)
    tokens = words(pieces[0])
    for piece in pieces[1:]:
        tokens.append(MASK)
        tokens += words(piece)
    return tokens


class WordVocabulary(Tokenizer):
    """metalearn's word tokenizer (see the module docstring).

    Args:
        tokens: id -> token, starting "[PAD]", "[UNK]", "[MASK]" (what `fit` builds and
            `state()["tokens"]` holds).
    """

    kind = "words"

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a word vocabulary starts with {', '.join(SPECIAL_TOKENS)}; "
                             f"got {tokens[:len(SPECIAL_TOKENS)]}")
        self.tokens = tokens
        self.ids = {token: index for index, token in enumerate(tokens)}

    @classmethod
    def fit(cls, texts: Iterable[str], min_count: int = 1,
            max_size: int | None = None) -> WordVocabulary:
        """The vocabulary of `texts` (the meta-train texts): words occurring at least `min_count`
        times, at most `max_size` of them (the most frequent), by descending count, ties
        alphabetical."""
        counts = Counter(token for text in texts for token in word_tokens(text) if token != MASK)
        ranked = sorted((token for token, count in counts.items() if count >= min_count),
                        key=lambda token: (-counts[token], token))
        return cls([*SPECIAL_TOKENS, *ranked[:max_size]])

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.ids
        return [[ids.get(token, UNKNOWN_ID) for token in word_tokens(text)] for text in texts]

    def state(self) -> dict:
        return {"kind": self.kind, "tokens": list(self.tokens)}


# Pretrained encoders' tokenizers (their encoders: metalearn/models/pretrained_text.py) --------
WORDLLAMA_INSTALL = ("backbone=wordllama needs the wordllama package: pip install --no-deps "
                     "wordllama==0.4.0.post1 tokenizers safetensors (make install does)")
WORDLLAMA_TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"
WORDLLAMA_WEIGHTS = "weights/l2_supercat_256.safetensors"
WORDLLAMA_TOKENS = 32000
TRANSFORMERS_INSTALL = ("backbone=pretrained_text needs the transformers package: pip install "
                        "transformers (metalearn's text extra: pip install -e '.[text]')")


def wordllama_file(name: str) -> Path:
    """A file of the installed wordllama package, found without importing it."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None:
        raise UserError(WORDLLAMA_INSTALL)
    folders = list(spec.submodule_search_locations or [Path(spec.origin).parent])
    file = Path(folders[0]) / name
    if not file.is_file():
        raise UserError(f"the installed wordllama package has no {name} (at {file}); "
                        f"{WORDLLAMA_INSTALL.split(': ', 1)[1]}")
    return file


class WordLlamaTokenizer(Tokenizer):
    """The LLaMA-2 tokenizer WordLlama ships (no special tokens added), ids + 1. A masked class
    word becomes its unknown token <unk>."""

    kind = "wordllama"
    vocab_size = WORDLLAMA_TOKENS + 1
    mask_text = "<unk>"

    def __init__(self):
        file = wordllama_file(WORDLLAMA_TOKENIZER)
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise UserError(WORDLLAMA_INSTALL) from None
        self.backend = Backend.from_file(str(file))
        self.backend.no_truncation()  # the task family truncates
        self.backend.no_padding()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [[index + 1 for index in encoding.ids] for encoding in encodings]

    def state(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_state(cls, state: dict) -> WordLlamaTokenizer:
        return cls()


def model_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"backbone.path={path} is not a directory; put a Hugging Face or sentence-transformers "
            "model there (a folder saved with save_pretrained, or on a machine with internet: "
            f"hf download <model name> --local-dir {path}); nothing is downloaded at run time")
    return folder


def load_pretrained_tokenizer(path: str):
    """The tokenizer of the model directory at `path`, offline."""
    folder = model_folder(path)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError(TRANSFORMERS_INSTALL) from None
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise not_loadable(path, "tokenizer", error) from None


def not_loadable(path: str, what: str, error: Exception) -> UserError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"backbone.path={path} holds no Hugging Face {what} that loads offline "
                     f"({reason}); put a folder saved with save_pretrained there")


class PretrainedTokenizer(Tokenizer):
    """The tokenizer of a local model directory, without special tokens (the encoder adds
    them), ids + 1. A masked class word becomes the model's mask token (else its unknown
    token)."""

    kind = "pretrained"

    def __init__(self, path: str):
        self.path = str(Path(path).expanduser().resolve())
        self.backend = load_pretrained_tokenizer(path)
        self.vocab_size = len(self.backend) + 1
        self.mask_text = self.backend.mask_token or self.backend.unk_token or ""

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.backend(list(texts), add_special_tokens=False)["input_ids"]
        return [[index + 1 for index in text] for text in ids]

    def state(self) -> dict:
        return {"kind": self.kind, "path": self.path}

    @classmethod
    def from_state(cls, state: dict) -> PretrainedTokenizer:
        return cls(state["path"])


def tokenizer_from_state(state: dict) -> Tokenizer:
    """The tokenizer whose `state()` this is (as stored in a checkpoint)."""
    kind = state.get("kind")
    if kind == "words":
        return WordVocabulary(state["tokens"])
    if kind == "wordllama":
        return WordLlamaTokenizer.from_state(state)
    if kind == "pretrained":
        return PretrainedTokenizer.from_state(state)
    raise UserError(f"the stored tokenizer is of kind {kind!r}, which this version of metalearn "
                    "does not know (words, wordllama, pretrained); evaluate with the version "
                    "that trained the model")
