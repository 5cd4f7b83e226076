"""The ranking metric recommender papers report: nDCG@k of an episode's query items ranked by the
model's predictions (MovieLens cold start: the query movies ranked by predicted rating).

nDCG@k (Jarvelin & Kekalainen 2002, as MeLU, Lee et al. KDD 2019, reports it): the discounted
cumulative gain DCG@k = sum over the first k ranks r = 1..k of gain(item at r) / log2(r + 1),
divided by the DCG@k of the ideal order (the items by true relevance). The gain is the relevance
itself (linear, MeLU's choice with ratings as relevance), not the 2^rel - 1 of web search.

Ties in the predictions must not flatter a model: a model that predicts one constant for every
item (the global mean, a user's support mean) knows nothing about the order and must score what a
random order scores, not the ideal order that a sort happening to keep the items' input order
could give it. So tied items are scored by the average over every order of the tie (McSherry &
Najork, ECIR 2008): each position a tie group occupies gets the group's mean relevance.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ndcg_at_k(scores: Tensor, relevance: Tensor, k: int) -> Tensor:
    """nDCG@k of each episode's Q items ranked by `scores`, highest first.

    scores [B, Q] predictions, relevance [B, Q] non-negative true relevance (a rating, or 1/0
    liked) -> [B] float64 in [0, 1]. Gain = relevance (linear), discount 1/log2(rank + 1), the
    first min(k, Q) ranks count. Items with equal scores count with the average over all orders
    of their tie (the expected nDCG of breaking the tie at random): a constant prediction scores
    a random ranking's expectation, never the ideal one. An episode whose relevances are all
    zero has ideal DCG 0, and every order is then ideal: its nDCG is 1.
    """
    if scores.shape != relevance.shape or scores.dim() != 2:
        raise ValueError(f"scores and relevance must both be [episodes, items]; got "
                         f"{tuple(scores.shape)} and {tuple(relevance.shape)}")
    if k < 1:
        raise ValueError(f"nDCG@k needs k >= 1; got {k}")
    if (relevance < 0).any():
        raise ValueError("nDCG needs non-negative relevance")
    scores, relevance = scores.detach().double(), relevance.detach().double()
    items = scores.shape[1]
    ranks = torch.arange(items, dtype=torch.float64, device=scores.device)
    discount = torch.where(ranks < k, 1.0 / torch.log2(ranks + 2.0), 0.0)

    sorted_scores, order = scores.sort(dim=1, descending=True)
    sorted_relevance = relevance.gather(1, order)
    # tie groups: runs of equal scores in the sorted order, numbered 0, 1, ... per episode
    starts = torch.ones_like(sorted_scores, dtype=torch.bool)
    starts[:, 1:] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    tie_group = starts.long().cumsum(dim=1) - 1
    group_sum = torch.zeros_like(sorted_relevance).scatter_add_(1, tie_group, sorted_relevance)
    group_size = torch.zeros_like(sorted_relevance).scatter_add_(
        1, tie_group, torch.ones_like(sorted_relevance))
    expected_gain = (group_sum / group_size.clamp(min=1)).gather(1, tie_group)

    dcg = (expected_gain * discount).sum(dim=1)
    ideal = (relevance.sort(dim=1, descending=True).values * discount).sum(dim=1)
    return torch.where(ideal > 0, dcg / ideal.clamp(min=torch.finfo(torch.float64).tiny), 1.0)
