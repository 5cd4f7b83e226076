"""The preprocessing of gradients and losses that a network reading them takes as input
(Andrychowicz et al. 2016, appendix A): the LSTM meta-learner's input and Meta Networks' meta
information."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. 2016, appendix A: x -> [log|x| / p, sign(x)] if |x| >= e^-p, else
    [-1, e^p x]. Gradients and losses span many orders of magnitude; this keeps both features
    in [-1, 1] while preserving magnitude and sign. Adds a last dimension of 2."""
    large = x.abs() >= math.exp(-p)
    # clamped so the branch torch.where discards never computes log(0)
    log_magnitude = x.abs().clamp_min(math.exp(-p)).log() / p
    return torch.stack([
        torch.where(large, log_magnitude, -1.0),
        torch.where(large, x.sign(), math.exp(p) * x),
    ], dim=-1)
