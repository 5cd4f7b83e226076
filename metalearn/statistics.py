"""The few-shot evaluation protocol's statistics: the mean over episodes with its 95% interval."""

from __future__ import annotations

import math

import torch

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
