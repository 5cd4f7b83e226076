"""Pretrained text encoders (their tokenizers: metalearn/data/tokenizers.py). Nothing is downloaded
at run time: the weights come from an installed package or a local directory.

- WordLlama (Miller 2024, github.com/dleemiller/WordLlama, MIT): the 256-dimensional token
  embeddings of its `l2_supercat` model, distilled from the input embeddings of large language
  models for the LLaMA-2 tokenizer's 32,000 tokens, which ship inside the `wordllama` package
  (weights/l2_supercat_256.safetensors, tokenizers/l2_supercat_tokenizer_config.json). A text
  is the mean of its tokens' embeddings, as WordLlama embeds texts (its AvgPool, without the
  optional normalisation). The files are read with `safetensors` and `tokenizers` without
  importing `wordllama`, whose import needs numpy 2 (metalearn runs numpy < 2).
- A Hugging Face or sentence-transformers model directory (`backbone.path`: a folder saved with
  save_pretrained, or a sentence-transformers model folder): its tokenizer, and its model's
  last hidden states mean-pooled over the text's tokens and the model's special tokens
  ([CLS] ... [SEP]), which is sentence-transformers' mean pooling.

Both tokenizers shift the package's ids by one so that 0 stays padding; the encoders undo it.
Frozen (the default), WordLlama's table is a buffer that checkpoints leave out (the package holds
it); a frozen Hugging Face model's weights stop requiring gradients and it stays in eval mode
(no dropout).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalearn.data.tokenizers import (
    TRANSFORMERS_INSTALL,
    WORDLLAMA_INSTALL,
    WORDLLAMA_WEIGHTS,
    PretrainedTokenizer,
    Tokenizer,
    WordLlamaTokenizer,
    model_folder,
    not_loadable,
    wordllama_file,
)
from metalearn.errors import UserError
from metalearn.models.text_encoders import TextEncoder, WordEmbedding, masked_mean


def wordllama_table() -> Tensor:
    """WordLlama's token embeddings in float32, a zero row for padding first: [32001, 256]."""
    file = wordllama_file(WORDLLAMA_WEIGHTS)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(WORDLLAMA_INSTALL) from None
    weights = load_file(file)["embedding.weight"].float()
    return torch.cat([weights.new_zeros(1, weights.shape[1]), weights])


def check_tokenizer(tokenizer: Tokenizer, kind: str, backbone: str) -> None:
    if tokenizer.kind != kind:
        raise UserError(f"backbone={backbone} reads the ids of its own tokenizer ({kind}), and "
                        f"these texts were encoded by a {tokenizer.kind} tokenizer; encode the "
                        "dataset with the backbone's tokenizer")


class WordLlamaEncoder(TextEncoder):
    """The mean of a text's WordLlama token embeddings: 256 features.

    Args:
        input_shape: (max_length,), the data's.
        tokenizer: a WordLlamaTokenizer (`own_tokenizer`).
        freeze: keep WordLlama's embeddings as they are; false fine-tunes them.
    """

    def __init__(self, input_shape: tuple[int, ...], tokenizer: Tokenizer, freeze: bool = True):
        super().__init__()
        check_tokenizer(tokenizer, WordLlamaTokenizer.kind, "wordllama")
        table = wordllama_table()
        # frozen, checkpoints leave the table out: the installed package holds it
        self.embedding = WordEmbedding(table, freeze, saved=not freeze)
        self.out_features = table.shape[1]

    @classmethod
    def own_tokenizer(cls, settings: dict) -> Tokenizer:
        return WordLlamaTokenizer()

    def forward(self, x: Tensor) -> Tensor:
        return masked_mean(self.embedding(x), x != 0)


def load_pretrained_model(path: str):
    """The model of the model directory at `path`, offline."""
    folder = model_folder(path)
    try:
        from transformers import AutoModel, PreTrainedModel
    except ImportError:
        raise UserError(TRANSFORMERS_INSTALL) from None
    try:
        # eager attention: written out, with second derivatives (MAML) and vmap rules; no hub
        # kernels (transformers 5 fetches them by default where `kernels` is installed)
        options = {"use_kernels": False} if hasattr(PreTrainedModel, "use_kernels") else {}
        return AutoModel.from_pretrained(folder, local_files_only=True,
                                         attn_implementation="eager", **options)
    except (OSError, ValueError, KeyError) as error:
        raise not_loadable(path, "model", error) from None


def special_tokens(backend) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text's own ([CLS] and [SEP] for BERT)."""
    plain = backend("a", add_special_tokens=False)["input_ids"]
    full = backend("a")["input_ids"]
    start = next(i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain)
    return full[:start], full[start + len(plain):]


class PretrainedTextEncoder(TextEncoder):
    """A local Hugging Face / sentence-transformers model: the mean of its last hidden states
    over the text's tokens and its special tokens, `hidden_size` features.

    Args:
        input_shape: (max_length,), the data's.
        tokenizer: the PretrainedTokenizer of the same directory (`own_tokenizer`).
        path: the model directory.
        freeze: keep the model's weights as they are (and its dropout off); false fine-tunes it.
    """

    def __init__(self, input_shape: tuple[int, ...], tokenizer: Tokenizer, path: str,
                 freeze: bool = True):
        super().__init__()
        check_tokenizer(tokenizer, PretrainedTokenizer.kind, "pretrained_text")
        self.model = load_pretrained_model(path)
        self.freeze = freeze
        if freeze:
            self.model.requires_grad_(False)
        prefix, suffix = special_tokens(tokenizer.backend)
        self.register_buffer("prefix", torch.tensor(prefix, dtype=torch.long), persistent=False)
        self.register_buffer("suffix", torch.tensor(suffix, dtype=torch.long), persistent=False)
        self.pad_id = tokenizer.backend.pad_token_id or 0
        positions = getattr(self.model.config, "max_position_embeddings", None)
        longest = input_shape[0] + len(prefix) + len(suffix)
        if positions is not None and longest > positions:
            raise UserError(
                f"dataset.max_length={input_shape[0]} and the model's {len(prefix) + len(suffix)} "
                f"special tokens exceed the {positions} positions of backbone.path={path}; set "
                f"dataset.max_length={positions - len(prefix) - len(suffix)} or less")
        self.out_features = self.model.config.hidden_size

    @classmethod
    def own_tokenizer(cls, settings: dict) -> Tokenizer:
        return PretrainedTokenizer(settings["path"])

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        mask = x != 0
        n, length = x.shape
        before, after = len(self.prefix), len(self.suffix)
        ids = torch.cat([self.prefix.expand(n, before), torch.where(mask, x - 1, self.pad_id),
                         x.new_full((n, after), self.pad_id)], dim=1)
        # the suffix follows each text's last token (texts are padded on the right)
        positions = torch.arange(ids.shape[1], device=x.device)
        end = before + mask.sum(1, keepdim=True)  # [n, 1]
        for offset in range(after):
            ids = torch.where(positions == end + offset, self.suffix[offset], ids)
        attention = positions < end + after
        states = self.model(input_ids=ids, attention_mask=attention.long()).last_hidden_state
        return masked_mean(states, attention)
