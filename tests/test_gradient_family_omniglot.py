"""FOMAML, Meta-SGD and ANIL learn real Omniglot within about two minutes of CPU time each."""

from __future__ import annotations

import pytest

from metalearn.run import train
from tests import budgets
from tests.conftest import make_config


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["anil", "fomaml", "metasgd"])
def test_learns_omniglot_5way_1shot(tmp_path, algorithm):
    record = train(make_config(budgets.OMNIGLOT[algorithm], tmp_path))
    assert (record["algorithm"], record["n_way"], record["k_shot"]) == (algorithm, 5, 1)
    assert record["test_acc"] >= 0.50, record  # chance is 0.20
