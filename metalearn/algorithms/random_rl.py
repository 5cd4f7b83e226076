"""The random-initialisation baseline of MAML's reinforcement-learning figures (Finn et al. 2017,
section 5.3): a policy whose weights are never trained (meta-training makes no rollouts),
fine-tuned at test time by the same policy-gradient steps as MAML.
"""

from __future__ import annotations

from torch import nn

from metalearn.algorithms.meta_rl import MetaRLModule
from metalearn.data.env_family import EnvFamily


class RandomPolicy(MetaRLModule):
    """Args: those of MetaRLModule that test-time adaptation uses."""

    def __init__(self, backbone: nn.Module, envs: EnvFamily, inner_lr: float = 0.1,
                 test_inner_steps: int = 3, gamma: float = 0.99, gae_lambda: float = 1.0,
                 episodes_per_task: int = 20, later_inner_lr: float | None = 0.05):
        super().__init__(backbone, envs, inner_lr, 0, test_inner_steps, gamma, gae_lambda,
                         episodes_per_task, later_inner_lr=later_inner_lr)
        self.save_hyperparameters(ignore=["backbone", "envs"])

    def meta_update(self, tasks: list, seed: int) -> dict[str, float]:
        """Nothing: the weights stay as initialised."""
        return {}
