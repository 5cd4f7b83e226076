"""Shared fixtures: Hydra configs composed in-process, and one trained ProtoNet per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from metalearn.evaluation.protocol import score_episodes
from metalearn.paths import project_root
from metalearn.run.compose import compose_config
from tests.budgets import BUDGETS

ROOT = Path(project_root())
os.environ.setdefault("WANDB_MODE", "offline")


def make_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """The config `python train.py <overrides>` would run with, writing into output_dir."""
    return compose_config(overrides, output_dir, config_name)


def mean_query_score(model, episodes) -> float:
    """Mean query score (accuracy, or MSE for regression) of `model.adapt_and_predict` over the
    batches of `episodes`."""
    model.eval()
    return torch.cat([score_episodes(model, batch) for batch in episodes]).mean().item()


@pytest.fixture
def one_thread():
    """For tests of many small ops, which gain nothing from a second thread: on a machine shared
    with other jobs, OpenMP threads waiting on each other made such runs three times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_protonet(tmp_path_factory) -> tuple[dict, Path]:
    """ProtoNet meta-trained for about a minute on Omniglot (lake split), then tested.

    Returns the results record and the run directory. Shared by the tests that need a trained
    metric model, so the suite trains it once.
    """
    from metalearn.run.training import train

    run_dir = tmp_path_factory.mktemp("protonet_run")
    return train(make_config(BUDGETS["protonet (lake)"].overrides, run_dir)), run_dir
