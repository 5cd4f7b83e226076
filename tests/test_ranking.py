"""nDCG@k (metalearn/data/ranking.py) against hand-computed cases and a plain-Python
reference that averages over every order of the tied predictions by enumerating them."""

import itertools
import math

import pytest
import torch

from metalearn.data.ranking import ndcg_at_k


def dcg(relevances: list[float], k: int) -> float:
    return sum(rel / math.log2(rank + 1) for rank, rel in enumerate(relevances[:k], start=1))


def reference_ndcg(scores: list[float], relevance: list[float], k: int) -> float:
    """The mean nDCG@k over every order of the items that ranks higher scores first."""
    ideal = dcg(sorted(relevance, reverse=True), k)
    if ideal == 0:
        return 1.0
    values = []
    for order in itertools.permutations(range(len(scores))):
        if all(scores[a] >= scores[b] for a, b in zip(order, order[1:])):
            values.append(dcg([relevance[i] for i in order], k) / ideal)
    return sum(values) / len(values)


def test_perfect_and_reversed_rankings_by_hand():
    relevance = torch.tensor([[3.0, 2.0, 1.0]])
    assert ndcg_at_k(torch.tensor([[0.9, 0.5, 0.1]]), relevance, 3).item() == pytest.approx(1.0)
    # reversed: DCG = 1 + 2/log2(3) + 3/2 = 3.7618595; ideal = 3 + 2/log2(3) + 1/2 = 4.7618595
    reversed_scores = torch.tensor([[0.1, 0.5, 0.9]])
    assert ndcg_at_k(reversed_scores, relevance, 3).item() == pytest.approx(0.7899980, abs=1e-6)
    # @1: the first item has relevance 1, the ideal 3
    assert ndcg_at_k(reversed_scores, relevance, 1).item() == pytest.approx(1 / 3)


def test_a_constant_prediction_scores_a_random_order_not_the_ideal_one():
    relevance = torch.tensor([[3.0, 2.0, 1.0]])
    constant = torch.zeros(1, 3)
    # every position gets the mean relevance 2: 2 * (1 + 1/log2(3) + 1/2) / 4.7618595
    assert ndcg_at_k(constant, relevance, 3).item() == pytest.approx(0.8949990, abs=1e-6)
    assert ndcg_at_k(constant, relevance, 1).item() == pytest.approx(2 / 3)
    # the items' input order (here the ideal one) never decides a tie
    assert ndcg_at_k(constant, relevance.flip(1), 3).item() == pytest.approx(0.8949990, abs=1e-6)


def test_k_beyond_the_items_uses_them_all_and_zero_relevance_is_ideal():
    scores, relevance = torch.tensor([[0.1, 0.5, 0.9]]), torch.tensor([[3.0, 2.0, 1.0]])
    assert torch.equal(ndcg_at_k(scores, relevance, 10), ndcg_at_k(scores, relevance, 3))
    assert ndcg_at_k(scores, torch.zeros(1, 3), 2).item() == 1.0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_matches_the_reference_on_random_episodes_with_ties(k):
    generator = torch.Generator().manual_seed(k)
    # scores drawn from 3 values: many ties; ratings 0.5..5 in half stars, some liked/not rows
    scores = torch.randint(0, 3, (40, 6), generator=generator).float()
    relevance = torch.randint(1, 11, (40, 6), generator=generator).float() / 2
    relevance[30:] = torch.randint(0, 2, (10, 6), generator=generator).float()
    got = ndcg_at_k(scores, relevance, k)
    expected = [reference_ndcg(s.tolist(), r.tolist(), k) for s, r in zip(scores, relevance)]
    assert got.tolist() == pytest.approx(expected, abs=1e-12)


def test_matches_the_reference_without_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 5, generator=generator)
    relevance = torch.rand(50, 5, generator=generator)
    expected = [reference_ndcg(s.tolist(), r.tolist(), 3) for s, r in zip(scores, relevance)]
    assert ndcg_at_k(scores, relevance, 3).tolist() == pytest.approx(expected, abs=1e-12)


def test_refuses_bad_shapes_and_negative_relevance():
    with pytest.raises(ValueError, match="non-negative"):
        ndcg_at_k(torch.zeros(1, 3), torch.tensor([[1.0, -1.0, 0.0]]), 3)
    with pytest.raises(ValueError, match="episodes, items"):
        ndcg_at_k(torch.zeros(3), torch.zeros(3), 3)
