"""FOMAML, Meta-SGD and ANIL learn real Omniglot within about two minutes of CPU time each."""

from __future__ import annotations

import pytest

from metalearn.run import train
from tests.conftest import make_config

# Outer steps of 4 tasks on a 32-channel Conv4; training tasks carry 5 queries per class (test
# tasks keep 15). Second-order Meta-SGD costs more per step and learns faster, so it gets 500
# steps; the others 1,000. Measured accuracies and times: experiments/results/gradient_family.md.
BUDGET = ["backbone.hidden_channels=32", "algorithm.meta_batch_size=4", "algorithm.outer_lr=0.003",
          "episode.train_query_size=5", "num_epochs=1", "episode.val_episodes=50",
          "episode.test_episodes=200", "seed=5"]
TASKS = {"fomaml": 4000, "metasgd": 2000, "anil": 4000}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(TASKS))
def test_learns_omniglot_5way_1shot(tmp_path, algorithm):
    overrides = [f"algorithm={algorithm}", f"episode.num_tasks={TASKS[algorithm]}", *BUDGET]
    record = train(make_config(overrides, tmp_path))
    assert (record["algorithm"], record["n_way"], record["k_shot"]) == (algorithm, 5, 1)
    assert record["test_acc"] >= 0.50, record  # chance is 0.20
