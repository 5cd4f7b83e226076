"""FOMAML, Meta-SGD and ANIL learn real Omniglot within about two minutes of CPU time each."""

from __future__ import annotations

import pytest
import torch

from metalearn.build import build
from metalearn.training import train
from tests import budgets
from tests.conftest import make_config, mean_query_accuracy


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["anil", "fomaml", "metasgd"])
def test_learns_omniglot_5way_1shot(tmp_path, algorithm):
    cfg = make_config(budgets.OMNIGLOT[algorithm], tmp_path)
    record = train(cfg)
    assert (record["algorithm"], record["n_way"], record["k_shot"]) == (algorithm, 5, 1)
    assert record["test_acc"] >= 0.50, record  # chance is 0.20
    # adapting a random initialisation already beats chance; meta-training must beat that too
    torch.manual_seed(12345)
    datamodule, random_init = build(cfg)
    random_acc = mean_query_accuracy(random_init, datamodule.test_dataloader())
    assert record["test_acc"] >= random_acc + 0.05, (record["test_acc"], random_acc)
