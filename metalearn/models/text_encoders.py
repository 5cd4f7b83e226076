"""Trainable text encoders (backbones): rows of token ids [n, L] -> features [n, out_features].

A row holds a text's token ids, zero-padded on the right (0 is always padding, so the mask of real
tokens is `x != 0`); L is the longest text of the batch, at most the data's max_length
(`input_shape[0]`). Every encoder gives a text the same features whatever padding its batch
adds, and finite features to a row of padding only (an empty text). They are written for MAML's
batched inner loop (metalearn/algorithms/functional.py: functional_call under vmap): tensor
operations only, no in-place updates of weights, no Python branches on tensor values.

- BagOfEmbeddings: the mean of the text's word embeddings, the fast baseline (fastText's
  classifier without n-grams, Joulin et al. 2017).
- TextCNN: Kim 2014, "Convolutional Neural Networks for Sentence Classification": filters of
  widths 3, 4 and 5 over the word embeddings, ReLU, max-pooled over the text.
- TextTransformer: a small pre-LN transformer encoder (Vaswani et al. 2017; pre-LN as in
  Xiong et al. 2020) with learned positions, mean-pooled over the text's tokens.

Word embeddings (`word_embedding`) have one row per token id of the tokenizer: random, or read
from a word-vector file (metalearn/models/word_vectors.py), then frozen or fine-tuned. Frozen
rows are a buffer, not a parameter, so no optimiser and no inner loop changes them, whatever the
algorithm's options.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.data.tokenizers import Tokenizer
from metalearn.errors import UserError, check_whole_number, is_number
from metalearn.models.word_vectors import read_word_vectors


class TextEncoder(nn.Module):
    """Base of the text encoders. The builder asks the encoder's class for the tokenizer it
    needs (`own_tokenizer`); the trainable encoders need none of their own and read the task
    family's word vocabulary."""

    @classmethod
    def own_tokenizer(cls, settings: dict) -> Tokenizer | None:
        """The tokenizer the data must be encoded with, given the backbone config's keys; None:
        the task family's own."""
        return None


class WordEmbedding(nn.Module):
    """A table of token embeddings [vocab_size, dim] (row 0, padding, is zero): a parameter, or
    with `freeze` a buffer, saved in checkpoints unless `saved=False` (a table that is rebuilt
    from an installed package)."""

    def __init__(self, table: Tensor, freeze: bool, saved: bool = True):
        super().__init__()
        if freeze:
            self.register_buffer("weight", table, persistent=saved)
        else:
            self.weight = nn.Parameter(table)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight, padding_idx=0)


def word_embedding(tokenizer: Tokenizer, embedding_dim: int, vectors: str | None,
                   freeze: bool) -> WordEmbedding:
    """Embeddings of the tokenizer's ids: N(0, 1 / embedding_dim), or the vectors of the file at
    `vectors` for the words it holds and random rows of the same standard deviation for the others
    (Kim 2014 matches their variance too).

    Not N(0, 1), nn.Embedding's: a text's features then differ by several units from the start,
    and ProtoNet's squared distances saturated its softmax (WordNet 5-way 1-shot after one CPU
    minute: 60.8% +- 1.6% from N(0, 1/128), 39.3% +- 0.9% from N(0, 1) after two)."""
    check_whole_number("backbone.embedding_dim", embedding_dim)
    table = torch.randn(tokenizer.vocab_size, embedding_dim)
    if vectors is not None:
        ids, rows = read_word_vectors(vectors, tokenizer, embedding_dim)
        table = table * (rows.std() if rows.numel() > 1 else 1.0)
        table[ids] = rows
    else:
        table = table * embedding_dim ** -0.5
    table[0] = 0
    return WordEmbedding(table, freeze)


def check_dropout(dropout: float) -> None:
    if not is_number(dropout) or not 0 <= dropout < 1:
        raise UserError(f"backbone.dropout={dropout!r} must be a number in [0, 1)")


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """The mean of states [n, L, d] over the positions where mask [n, L] is true: [n, d]; zeros
    for a row without any."""
    mask = mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1)


def output_norm_layer(features: int, output_norm: bool) -> nn.Module:
    """A LayerNorm over the features, or nothing. The mean or maximum of small word embeddings
    is small, and a linear head adapted from it in a few steps (ANIL, MAML, the fine-tuning
    baselines) barely moves: normalised, the features have the scale of Conv4's, which those
    algorithms' defaults were tuned on (ANIL on WordNet after 200 steps: 24.2% +- 1.0% without,
    see experiments/results/text.md with)."""
    return nn.LayerNorm(features) if output_norm else nn.Identity()


class BagOfEmbeddings(TextEncoder):
    """The mean of a text's word embeddings, then a LayerNorm: `embedding_dim` features.

    Args:
        input_shape: (max_length,), the data's.
        tokenizer: the task family's word vocabulary.
        embedding_dim: the width of a word embedding (the file's width with `vectors`).
        vectors: path of a word-vector text file (GloVe, fastText .vec, word2vec text); None:
            random embeddings.
        freeze_embeddings: keep the embeddings as initialised.
        output_norm: end in a LayerNorm over the features (`output_norm_layer`).
    """

    def __init__(self, input_shape: tuple[int, ...], tokenizer: Tokenizer,
                 embedding_dim: int = 128, vectors: str | None = None,
                 freeze_embeddings: bool = False, output_norm: bool = True):
        super().__init__()
        self.embedding = word_embedding(tokenizer, embedding_dim, vectors, freeze_embeddings)
        self.norm = output_norm_layer(embedding_dim, output_norm)
        self.out_features = embedding_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(masked_mean(self.embedding(x), x != 0))


class TextCNN(TextEncoder):
    """Kim 2014: `num_filters` filters of each width over the word embeddings, ReLU, the
    maximum over the text, then a LayerNorm: num_filters * len(filter_widths) features.

    Kim's code pads each sentence with width - 1 zero vectors on both sides (a wide
    convolution), so that a text shorter than a filter still has windows; we do the same and
    take the maximum over the windows that hold at least one of the text's tokens, so that the
    padding a batch adds after a text never changes its features.

    Args:
        input_shape, tokenizer, embedding_dim, vectors, freeze_embeddings: as BagOfEmbeddings.
        filter_widths: the widths of the filters, in words.
        num_filters: filters of each width.
        dropout: dropout on the features in training (Kim: 0.5).
        output_norm: end in a LayerNorm over the features (`output_norm_layer`; Kim: none).
    """

    def __init__(self, input_shape: tuple[int, ...], tokenizer: Tokenizer,
                 embedding_dim: int = 128, vectors: str | None = None,
                 freeze_embeddings: bool = False, filter_widths: Sequence[int] = (3, 4, 5),
                 num_filters: int = 100, dropout: float = 0.0, output_norm: bool = True):
        super().__init__()
        check_whole_number("backbone.num_filters", num_filters)
        if not filter_widths or not all(isinstance(width, int) and not isinstance(width, bool)
                                        and width >= 1 for width in filter_widths):
            raise UserError(f"backbone.filter_widths={list(filter_widths)} must be a list of "
                            "whole numbers >= 1 (words), e.g. [3, 4, 5]")
        check_dropout(dropout)
        self.embedding = word_embedding(tokenizer, embedding_dim, vectors, freeze_embeddings)
        self.filter_widths = tuple(filter_widths)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(embedding_dim, num_filters, width, padding=width - 1)
            for width in self.filter_widths)
        self.dropout = nn.Dropout(dropout)
        self.out_features = num_filters * len(self.filter_widths)
        self.norm = output_norm_layer(self.out_features, output_norm)

    def forward(self, x: Tensor) -> Tensor:
        mask = x != 0
        lengths = mask.sum(1, keepdim=True)  # [n, 1]; texts are padded on the right
        # padding positions as zero vectors, the convolution's own padding, whatever row 0 holds
        embedded = (self.embedding(x) * mask.unsqueeze(-1)).transpose(1, 2)  # [n, d, L]
        features = []
        for width, convolution in zip(self.filter_widths, self.convolutions):
            maps = torch.relu(convolution(embedded))  # [n, filters, L + width - 1]
            # window p covers tokens p - width + 1 .. p: it holds a token of the text if
            # p < length + width - 1 (an empty text keeps the width - 1 windows of zeros)
            starts = torch.arange(maps.shape[-1], device=x.device)
            holds_text = (starts < lengths + width - 1).unsqueeze(1)  # [n, 1, L + width - 1]
            # after the ReLU every value is >= 0: zeroing the other windows leaves the maximum
            features.append((maps * holds_text).amax(-1))
        return self.dropout(self.norm(torch.cat(features, dim=1)))


class EncoderLayer(nn.Module):
    """A pre-LN transformer layer whose attention ignores padding keys. Attention is written out
    (not nn.MultiheadAttention / scaled_dot_product_attention, whose fused kernels have no
    second derivatives): MAML's second-order meta-gradient runs through it, under vmap."""

    def __init__(self, dim: int, num_heads: int, feedforward_dim: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(dim)
        self.query_key_value = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.feedforward_norm = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(nn.Linear(dim, feedforward_dim), nn.GELU(),
                                         nn.Dropout(dropout), nn.Linear(feedforward_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        n, length, dim = states.shape
        head_dim = dim // self.num_heads
        query, key, value = (self.query_key_value(self.attention_norm(states))
                             .reshape(n, length, 3, self.num_heads, head_dim)
                             .permute(2, 0, 3, 1, 4))  # 3 x [n, heads, L, head_dim]
        scores = query @ key.transpose(-1, -2) / math.sqrt(head_dim)
        # the smallest number, not -inf: a row of padding only attends uniformly, not to NaN
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attended = (scores.softmax(-1) @ value).transpose(1, 2).reshape(n, length, dim)
        states = states + self.dropout(self.attention_out(attended))
        return states + self.dropout(self.feedforward(self.feedforward_norm(states)))


class TextTransformer(TextEncoder):
    """A small transformer encoder: word embeddings plus learned positions (one per position up
    to max_length), `num_layers` pre-LN layers, a last LayerNorm, the mean over the text's
    tokens: `embedding_dim` features.

    Args:
        input_shape, tokenizer, embedding_dim, vectors, freeze_embeddings: as BagOfEmbeddings;
            embedding_dim is also the width of the layers.
        num_layers: transformer layers.
        num_heads: attention heads; they split embedding_dim, which they must divide.
        feedforward_dim: the width of each layer's feed-forward block.
        dropout: dropout on the attention and feed-forward outputs in training.
    """

    def __init__(self, input_shape: tuple[int, ...], tokenizer: Tokenizer,
                 embedding_dim: int = 128, vectors: str | None = None,
                 freeze_embeddings: bool = False, num_layers: int = 2, num_heads: int = 4,
                 feedforward_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        check_whole_number("backbone.num_layers", num_layers)
        check_whole_number("backbone.num_heads", num_heads)
        check_whole_number("backbone.feedforward_dim", feedforward_dim)
        check_dropout(dropout)
        if embedding_dim % num_heads:
            raise UserError(f"backbone.num_heads={num_heads} must divide "
                            f"backbone.embedding_dim={embedding_dim}")
        self.embedding = word_embedding(tokenizer, embedding_dim, vectors, freeze_embeddings)
        self.positions = nn.Parameter(torch.randn(input_shape[0], embedding_dim) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(embedding_dim, num_heads, feedforward_dim,
                                                 dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(embedding_dim)
        self.out_features = embedding_dim

    def forward(self, x: Tensor) -> Tensor:
        mask = x != 0
        states = self.embedding(x) + self.positions[:x.shape[1]]
        for layer in self.layers:
            states = layer(states, mask)
        return masked_mean(self.norm(states), mask)
