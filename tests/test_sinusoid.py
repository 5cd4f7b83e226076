"""Gradient-based meta-learners learn an initialisation that adapts to a new sinusoid from 10
points: far better than before adapting, and than a random initialisation adapted the same way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metalearn.algorithms.base import EpisodicModule
from metalearn.build import build
from metalearn.training import train
from tests import budgets
from tests.conftest import make_config


def mean_query_mse(model: EpisodicModule, episodes, adapt: bool) -> float:
    model.eval()
    losses = []
    for batch in episodes:
        for task in batch.tasks():
            if adapt:
                predictions = model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
            else:
                predictions = model.learner(task.query_x).detach()
            losses.append(F.mse_loss(predictions, task.query_y).item())
    return sum(losses) / len(losses)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(budgets.SINUSOID))
def test_adapts_to_new_sinusoids(tmp_path, algorithm):
    cfg = make_config(budgets.SINUSOID[algorithm], tmp_path)
    record = train(cfg)
    datamodule, trained = build(cfg)
    trained.load_state_dict(torch.load(record["tested_checkpoint"])["state_dict"])
    torch.manual_seed(12345)
    _, random_init = build(cfg)
    episodes = list(datamodule.test_dataloader())

    post = mean_query_mse(trained, episodes, adapt=True)
    pre = mean_query_mse(trained, episodes, adapt=False)
    random_post = mean_query_mse(random_init, episodes, adapt=True)
    assert post == pytest.approx(record["test_mse"], rel=1e-4)
    assert post < pre / 3, (post, pre)
    assert post < random_post / 3, (post, random_post)
