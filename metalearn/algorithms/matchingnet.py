"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, NeurIPS 2016).

A query's label distribution is an attention-weighted sum of the support labels (equation 1),
P(y | x, S) = sum_i a(x, x_i) y_i, where a is the softmax over the support set of the cosine
similarities between the query's embedding f(x) and each support embedding g(x_i) (equation 2).
Training maximises the log-likelihood of the query labels.

`cosine_scale` multiplies the cosines before the softmax; 1 is the paper's attention. A ReLU
backbone's features are nonnegative, so their cosines lie in [0, 1] and unscaled attention can be
no sharper than e / (e + N - 1); on Omniglot 5-way 1-shot, 600 training tasks reached 77% with
scale 1 and 89% with scale 10 (experiments/results/cpu_budgets.md has the measured budget).

With `fce=True` the embeddings are full-context embeddings (appendix A.2):
- g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i): a bidirectional LSTM reads the support set's features
  g' as a sequence;
- f(x, S) = attLSTM(f'(x), g(S), K): an LSTM refines the query's feature f'(x) over
  `processing_steps` K steps, each attending over g(S) with its current state.
Without it f = g = the backbone, the paper's choice for Omniglot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.algorithms.metric import MetricModule, cosine_similarity


class SupportContext(nn.Module):
    """g(x_i, S): a bidirectional LSTM over the support set, added to the features it reads."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, bidirectional=True, batch_first=True)

    def forward(self, support_features: Tensor) -> Tensor:
        outputs, _ = self.lstm(support_features.unsqueeze(0))  # [1, S, 2 * dim]
        forward_h, backward_h = outputs.squeeze(0).chunk(2, dim=-1)
        return forward_h + backward_h + support_features


class QueryAttentionLSTM(nn.Module):
    """f(x, S): K steps of h_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1}) + f'(x), where
    r_{k-1} = sum_i softmax(h_{k-1} . g(x_i)) g(x_i) reads the support set.

    The LSTM's state [h, r] is twice its output width; feeding r with the input instead gives
    the same gate pre-activations W_x f' + W_h h + W_r r, with an output as wide as f'(x).
    """

    def __init__(self, dim: int, processing_steps: int):
        super().__init__()
        self.cell = nn.LSTMCell(2 * dim, dim)
        self.processing_steps = processing_steps

    def forward(self, query_features: Tensor, support_context: Tensor) -> Tensor:
        hidden = torch.zeros_like(query_features)
        cell = torch.zeros_like(query_features)
        for _ in range(self.processing_steps):
            readout = F.softmax(hidden @ support_context.T, dim=1) @ support_context
            hidden, cell = self.cell(torch.cat([query_features, readout], dim=1), (hidden, cell))
            hidden = hidden + query_features
        return hidden


class MatchingNet(MetricModule):
    """Args:
        backbone: the embedding network (f' = g').
        fce: full-context embeddings (appendix A.2 of the paper).
        processing_steps: K, the attention LSTM's steps over the support set (with fce).
        cosine_scale: multiplies the cosine similarities before the softmax (paper: 1).
    """

    def __init__(self, backbone: nn.Module, fce: bool = False, processing_steps: int = 5,
                 cosine_scale: float = 10.0, **base_args):
        super().__init__(backbone, **base_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.cosine_scale = cosine_scale
        dim = backbone.out_features
        self.support_context = SupportContext(dim) if fce else None
        self.query_attention = QueryAttentionLSTM(dim, processing_steps) if fce else None

    def process_support_features(self, support_features: Tensor, support_y: Tensor) -> None:
        if self.support_context is not None:
            support_features = self.support_context(support_features)
        super().process_support_features(support_features, support_y)

    def attention(self, query_features: Tensor) -> Tensor:
        """a(x, x_i): [Q, S], each row a softmax over the support set of cosine similarities."""
        if self.query_attention is not None:
            query_features = self.query_attention(query_features, self.support_features)
        cosine = cosine_similarity(query_features, self.support_features)
        return F.softmax(self.cosine_scale * cosine, dim=1)

    def score_queries(self, query_features: Tensor) -> Tensor:
        """log P(y | x, S): [Q, N]. These are normalised log-probabilities, so the base's
        cross-entropy on them is exactly the negative log-likelihood of the paper."""
        probabilities = self.attention(query_features) @ self.support_one_hot
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()
