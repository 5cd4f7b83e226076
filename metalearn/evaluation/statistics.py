"""The few-shot evaluation protocol's statistics: the mean over episodes with its 95% interval,
paired differences between models tested on the same episodes with their tests and Holm's
correction, and the interval of a score over training seeds."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from scipy import stats

Z_95 = 1.96


def mean_and_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean of per-episode scores and the half-width of its 95% confidence interval.

    The half-width is 1.96 standard errors: 1.96 * s / sqrt(n), with s the sample standard
    deviation (n - 1 in the denominator). One episode has no spread to estimate, so its
    interval is reported as 0.
    """
    values = values.detach().double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("no episodes to average")
    mean = values.mean().item()
    if n == 1:
        return mean, 0.0
    return mean, Z_95 * values.std(unbiased=True).item() / math.sqrt(n)


def paired_difference(scores_a: torch.Tensor, scores_b: torch.Tensor) -> dict[str, float]:
    """A's per-episode scores against B's on the same episodes: the mean difference A - B with
    the 95% interval of the per-episode differences (tighter than two separate intervals when
    the episodes' difficulty moves both), and the p-values of the paired t-test and of the
    Wilcoxon signed-rank test (scipy; zero differences dropped, its default).

    When every difference is zero there is nothing to test (scipy returns NaN or refuses):
    both p-values are 1.
    """
    a, b = (scores.detach().double().flatten().cpu() for scores in (scores_a, scores_b))
    if a.numel() != b.numel():
        raise ValueError(f"paired scores need the same episodes; got {a.numel()} and {b.numel()}")
    differences = a - b
    mean, ci95 = mean_and_ci95(differences)
    if not differences.any():
        p_ttest = p_wilcoxon = 1.0
    else:
        p_ttest = float(stats.ttest_rel(a.numpy(), b.numpy()).pvalue)
        p_wilcoxon = float(stats.wilcoxon(differences.numpy()).pvalue)
    return {"difference": mean, "difference_ci95": ci95, "p_ttest": p_ttest,
            "p_wilcoxon": p_wilcoxon}


def holm(p_values: list[float], alpha: float = 0.05) -> tuple[list[float], list[bool]]:
    """Holm's step-down correction (Holm 1979) of a family of p-values: the adjusted p-values,
    and which hypotheses are rejected at family-wise error rate `alpha` (adjusted <= alpha).

    The i-th smallest p-value is multiplied by (m - i + 1), kept monotone, and capped at 1.
    """
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted, [p <= alpha for p in adjusted]


def seed_interval(values: list[float]) -> float | None:
    """Half-width of the 95% interval of the mean of per-seed scores, from the t-distribution
    with n - 1 degrees of freedom (few seeds: 1.96 would be far too narrow); None for one seed,
    whose spread cannot be estimated."""
    if len(values) < 2:
        return None
    spread = torch.tensor(values, dtype=torch.float64).std(unbiased=True).item()
    return float(stats.t.ppf(0.975, len(values) - 1)) * spread / math.sqrt(len(values))


def pairwise_comparisons(scores: Sequence[torch.Tensor], alpha: float = 0.05) -> list[dict]:
    """Every pair i < j of models' per-episode scores on the same episodes: `paired_difference`
    (i minus j), with each test's p-values Holm-corrected over all pairs (`p_ttest_holm`,
    `p_wilcoxon_holm`) and whether each is significant at `alpha` after the correction."""
    pairs = [{"a": a, "b": b, **paired_difference(scores[a], scores[b])}
             for a, b in itertools.combinations(range(len(scores)), 2)]
    for test in ("ttest", "wilcoxon"):
        adjusted, rejected = holm([pair[f"p_{test}"] for pair in pairs], alpha)
        for pair, p_value, significant in zip(pairs, adjusted, rejected):
            pair[f"p_{test}_holm"], pair[f"significant_{test}"] = p_value, significant
    return pairs
