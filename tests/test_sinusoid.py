"""Gradient-based meta-learners learn an initialisation that adapts to a new sinusoid from 10
points: to the MSE measured for their budget, and far better than before adapting and than a
random initialisation adapted the same way, on the same test tasks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metalearn.algorithms.base import EpisodicModule
from metalearn.evaluation.statistics import mean_and_ci95
from metalearn.run.build import build
from metalearn.run.training import train
from tests.budgets import BUDGETS, CIS_OF_ROOM
from tests.conftest import make_config

ALGORITHMS = ["fomaml", "maml", "metasgd", "reptile"]


def query_mse(model: EpisodicModule, episodes, adapt: bool) -> torch.Tensor:
    """The query MSE of every test task, adapted to its support set or not: [tasks]."""
    model.eval()
    losses = []
    for batch in episodes:
        for task in batch.tasks():
            if adapt:
                predictions = model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
            else:
                predictions = model.learner(task.query_x).detach()
            losses.append(F.mse_loss(predictions, task.query_y))
    return torch.stack(losses)


def clearly_below(better: torch.Tensor, worse: torch.Tensor) -> bool:
    """Whether the per-task differences worse - better are positive by more than CIS_OF_ROOM of
    their 95% intervals (a paired comparison on the same tasks)."""
    mean, ci95 = mean_and_ci95(worse - better)
    return mean - CIS_OF_ROOM * ci95 > 0


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_adapts_to_new_sinusoids(tmp_path, algorithm):
    budget = BUDGETS[f"{algorithm} (sinusoid)"]
    cfg = make_config(budget.overrides, tmp_path)
    record = train(cfg)
    budget.check(record)
    datamodule, trained = build(cfg)
    trained.load_state_dict(torch.load(tmp_path / record["tested_checkpoint"])["state_dict"])
    torch.manual_seed(12345)
    _, random_init = build(cfg)
    episodes = list(datamodule.test_dataloader())

    post = query_mse(trained, episodes, adapt=True)
    pre = query_mse(trained, episodes, adapt=False)
    random_post = query_mse(random_init, episodes, adapt=True)
    assert post.mean().item() == pytest.approx(record["test_mse"], rel=1e-4)
    assert clearly_below(post, pre), (post.mean(), pre.mean())
    assert clearly_below(post, random_post), (post.mean(), random_post.mean())
