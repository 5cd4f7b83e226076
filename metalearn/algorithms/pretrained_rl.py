"""The pretrained baseline of MAML's reinforcement-learning figures (Finn et al. 2017,
section 5.3): one policy trained with TRPO on the trajectories of all the training tasks,
without adaptation (MAML-TRPO with no inner step), then fine-tuned at test time by the same
policy-gradient steps as MAML. With `env.oracle=true` the task is appended to every
observation, and the same policy is the paper's oracle (its return before adaptation is the
paper's line). The random initialisation: metalearn/algorithms/random_rl.py.
"""

from __future__ import annotations

from torch import nn

from metalearn.algorithms.maml_rl import MAMLRL
from metalearn.data.env_family import EnvFamily


class PretrainedPolicy(MAMLRL):
    """Args: as MAMLRL's, less inner_steps (none in training) and first_order."""

    def __init__(self, backbone: nn.Module, envs: EnvFamily, inner_lr: float = 0.1,
                 test_inner_steps: int = 3, gamma: float = 0.99, gae_lambda: float = 1.0,
                 episodes_per_task: int = 20, max_kl: float = 0.01, damping: float = 1e-5,
                 cg_iterations: int = 10, backtrack_ratio: float = 0.8,
                 max_backtracks: int = 15, later_inner_lr: float | None = 0.05):
        super().__init__(backbone, envs, inner_lr, 0, test_inner_steps, gamma, gae_lambda,
                         episodes_per_task, False, max_kl, damping, cg_iterations,
                         backtrack_ratio, max_backtracks, later_inner_lr)
