import math

import pytest
import torch

from metalearn.evaluation.statistics import (
    holm,
    mean_and_ci95,
    paired_difference,
    pairwise_comparisons,
    seed_interval,
)


def test_ci95_on_known_numbers():
    mean, ci = mean_and_ci95(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert mean == 0.5
    # sample std = sqrt(1/3); 1.96 * sqrt(1/3) / sqrt(4)
    assert ci == pytest.approx(1.96 * math.sqrt(1 / 3) / 2, rel=1e-12)
    mean, ci = mean_and_ci95(torch.tensor([0.9, 0.7, 0.8, 1.0, 0.6], dtype=torch.float64))
    assert mean == pytest.approx(0.8)
    assert ci == pytest.approx(1.96 * 0.158113883 / math.sqrt(5), rel=1e-8)


def test_ci95_edge_cases():
    assert mean_and_ci95(torch.full((600,), 0.75)) == (0.75, 0.0)
    assert mean_and_ci95(torch.tensor([0.3])) == (pytest.approx(0.3), None)  # no interval
    with pytest.raises(ValueError):
        mean_and_ci95(torch.tensor([]))


def test_ci95_shrinks_with_more_episodes():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(2400, generator=generator)
    _, ci_600 = mean_and_ci95(scores[:600])
    _, ci_2400 = mean_and_ci95(scores)
    assert ci_2400 == pytest.approx(ci_600 / 2, rel=0.1)


# Paired comparisons -------------------------------------------------------------------------------
A = torch.tensor([0.8, 0.6, 1.0, 0.7, 0.9, 0.5], dtype=torch.float64)
B = torch.tensor([0.6, 0.65, 0.7, 0.5, 0.9, 0.3], dtype=torch.float64)


def test_paired_difference_on_known_scores():
    from scipy import stats

    paired = paired_difference(A, B)
    differences = [0.2, -0.05, 0.3, 0.2, 0.0, 0.2]
    mean = sum(differences) / 6  # 0.141666...
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 5)
    assert paired["difference"] == pytest.approx(0.85 / 6, rel=1e-12)
    assert paired["difference_ci95"] == pytest.approx(1.96 * sd / math.sqrt(6), rel=1e-12)
    # the paired t-test by hand: t = mean / (sd / sqrt(n)) on n - 1 degrees of freedom
    t = mean / (sd / math.sqrt(6))
    assert paired["p_ttest"] == pytest.approx(2 * stats.t.sf(t, 5), rel=1e-9)
    assert paired["p_ttest"] == pytest.approx(stats.ttest_rel(A.numpy(), B.numpy()).pvalue)
    # Wilcoxon drops the zero difference: 5 nonzero, ranks of |d| = 0.05 (1), 0.2 x3 (3 each),
    # 0.3 (5); W- = 1 is the statistic scipy reports
    assert paired["p_wilcoxon"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    assert stats.wilcoxon(differences).statistic == 1
    # A against B is B against A with the sign turned
    reverse = paired_difference(B, A)
    assert reverse["difference"] == pytest.approx(-paired["difference"])
    assert reverse["p_ttest"] == pytest.approx(paired["p_ttest"])


def test_paired_interval_is_tighter_than_two_independent_ones_when_episodes_vary_together():
    generator = torch.Generator().manual_seed(0)
    difficulty = torch.rand(600, generator=generator, dtype=torch.float64)
    a = difficulty + 0.02 + 0.05 * torch.rand(600, generator=generator, dtype=torch.float64)
    b = difficulty + 0.05 * torch.rand(600, generator=generator, dtype=torch.float64)
    paired = paired_difference(a, b)
    assert paired["difference_ci95"] < (mean_and_ci95(a)[1] + mean_and_ci95(b)[1]) / 5
    assert paired["p_ttest"] < 1e-10 and paired["p_wilcoxon"] < 1e-10


def test_identical_scores_differ_by_zero_with_p_one():
    # scipy's ttest_rel gives NaN and its wilcoxon refuses when every difference is zero
    assert paired_difference(A, A.clone()) == {"difference": 0.0, "difference_ci95": 0.0,
                                               "p_ttest": 1.0, "p_wilcoxon": 1.0}
    [pair] = pairwise_comparisons([A, A.clone()])
    assert not pair["significant_ttest"] and not pair["significant_wilcoxon"]
    assert pair["p_ttest_holm"] == pair["p_wilcoxon_holm"] == 1.0
    with pytest.raises(ValueError):
        paired_difference(A, A[:3])


def test_holm_on_a_textbook_example():
    # four hypotheses at alpha 0.05: sorted 0.005 (x4 = 0.02, rejected), 0.01 (x3 = 0.03,
    # rejected), 0.03 (x2 = 0.06, kept), 0.04 (x1 = 0.04, but kept: the step-down has stopped,
    # and its adjusted p-value is kept monotone at 0.06)
    adjusted, rejected = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert rejected == [True, False, False, True]
    # at alpha 0.03, Bonferroni would keep 0.01 (x4 = 0.04 > 0.03); Holm rejects it (x3 = 0.03)
    assert holm([0.01, 0.04, 0.03, 0.005], alpha=0.03)[1] == [True, False, False, True]
    assert holm([0.5, 0.9])[0] == [1.0, 1.0]  # capped at 1
    assert holm([]) == ([], [])


def test_pairwise_comparisons_cover_every_pair_with_holm_over_all_of_them():
    c = A - 0.3
    pairs = pairwise_comparisons([A, B, c])
    assert [(pair["a"], pair["b"]) for pair in pairs] == [(0, 1), (0, 2), (1, 2)]
    for test in ("ttest", "wilcoxon"):
        adjusted, rejected = holm([pair[f"p_{test}"] for pair in pairs])
        assert [pair[f"p_{test}_holm"] for pair in pairs] == adjusted
        assert [pair[f"significant_{test}"] for pair in pairs] == rejected
    assert pairs[1]["difference"] == pytest.approx(0.3) and pairs[1]["p_ttest"] < 1e-10


def test_seed_interval_uses_the_t_distribution():
    # two seeds: t(0.975, 1) = 12.7062; s = |a - b| / sqrt(2); half-width t * s / sqrt(2)
    assert seed_interval([0.90, 0.80]) == pytest.approx(12.7062047 * 0.1 / 2, rel=1e-7)
    # five seeds: t(0.975, 4) = 2.7764451
    values = [0.9, 0.7, 0.8, 1.0, 0.6]
    assert seed_interval(values) == pytest.approx(2.7764451 * 0.158113883 / math.sqrt(5),
                                                  rel=1e-6)
    assert seed_interval([0.9]) is None
