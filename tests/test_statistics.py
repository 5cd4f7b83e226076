import math

import pytest
import torch

from metalearn.statistics import mean_and_ci95


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
    assert mean_and_ci95(torch.tensor([0.3])) == (pytest.approx(0.3), 0.0)
    with pytest.raises(ValueError):
        mean_and_ci95(torch.tensor([]))


def test_ci95_shrinks_with_more_episodes():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(2400, generator=generator)
    _, ci_600 = mean_and_ci95(scores[:600])
    _, ci_2400 = mean_and_ci95(scores)
    assert ci_2400 == pytest.approx(ci_600 / 2, rel=0.1)
