"""FOMAML, Meta-SGD and ANIL learn real Omniglot within about two minutes of CPU time each, to
the score measured for their budget (tests/budgets.py)."""

from __future__ import annotations

import pytest

from metalearn.run.training import train
from tests.budgets import BUDGETS
from tests.conftest import make_config


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["anil", "fomaml", "metasgd"])
def test_learns_omniglot_5way_1shot(tmp_path, algorithm):
    budget = BUDGETS[f"{algorithm} (omniglot)"]
    record = train(make_config(budget.overrides, tmp_path))
    assert (record["algorithm"], record["n_way"], record["k_shot"]) == (algorithm, 5, 1)
    budget.check(record)
