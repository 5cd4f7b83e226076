"""MAML for reinforcement learning (Finn, Abbeel and Levine 2017, section 5.3 and appendix A.2).

Inner loop: `inner_steps` vanilla policy-gradient steps per task (MetaRLModule.adapt: a linear
feature baseline fitted per task, advantages normalised per task). Outer loop: one TRPO step
(Schulman et al. 2015; metalearn/algorithms/policy_gradient.py) on the post-adaptation
objective, as in the authors' code (cbfinn/maml_rl, maml_npo.py):

    surrogate(theta) = mean over tasks of -mean_t [ pi_theta'(a|s) / pi_old'(a|s) * A(s, a) ]
    kl(theta)        = mean over tasks of  mean_t KL(pi_old'(.|s) || pi_theta'(.|s))

over the post-adaptation trajectories, theta' = the weights adapted from theta on the
pre-adaptation trajectories (recomputed through the inner steps for every candidate of the line
search), old' = the adapted weights that sampled them. The paper computes the Fisher-vector
products by finite differences; we differentiate through the inner step with autograd (third
derivatives of the policy for the Fisher-vector products, as learn2learn's maml_trpo example).
`first_order` drops the inner step's second derivatives.

With `inner_steps=0` the outer step is plain TRPO on the tasks' trajectories: the pretrained
baseline (metalearn/algorithms/pretrained_rl.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metalearn.algorithms.meta_rl import MetaRLModule, Samples, TaskParams
from metalearn.algorithms.policy_gradient import masked_mean, trpo_step
from metalearn.data.env_family import EnvFamily
from metalearn.errors import (
    UserError,
    check_positive_number,
    check_whole_number,
    is_number,
)


class MAMLRL(MetaRLModule):
    """Args (besides MetaRLModule's):
        max_kl: TRPO's bound on the mean KL of an outer step (MAML: 0.01).
        damping: added to the Fisher matrix's diagonal (rllab's reg_coeff 1e-5).
        cg_iterations: conjugate-gradient iterations for the natural gradient (rllab: 10).
        backtrack_ratio, max_backtracks: the line search's shrink factor and number of tries
            (rllab's ConjugateGradientOptimizer, which MAML's code used: 0.8 and 15).
    """

    def __init__(self, backbone: nn.Module, envs: EnvFamily, inner_lr: float = 0.1,
                 inner_steps: int = 1, test_inner_steps: int = 3, gamma: float = 0.99,
                 gae_lambda: float = 1.0, episodes_per_task: int = 20,
                 first_order: bool = False, max_kl: float = 0.01, damping: float = 1e-5,
                 cg_iterations: int = 10, backtrack_ratio: float = 0.8,
                 max_backtracks: int = 15, later_inner_lr: float | None = 0.05):
        super().__init__(backbone, envs, inner_lr, inner_steps, test_inner_steps, gamma,
                         gae_lambda, episodes_per_task, first_order, later_inner_lr)
        self.max_kl = check_positive_number("algorithm.max_kl", max_kl)
        if not (is_number(damping) and damping >= 0):
            raise UserError(f"algorithm.damping={damping!r} must be a number >= 0")
        self.damping = damping
        if not (is_number(backtrack_ratio) and 0 < backtrack_ratio < 1):
            raise UserError(f"algorithm.backtrack_ratio={backtrack_ratio!r} must be a number in "
                            "(0, 1)")
        self.backtrack_ratio = backtrack_ratio
        self.cg_iterations = check_whole_number("algorithm.cg_iterations", cg_iterations)
        self.max_backtracks = check_whole_number("algorithm.max_backtracks", max_backtracks)
        self.save_hyperparameters(ignore=["backbone", "envs"])

    def adapted(self, samples: Samples) -> TaskParams:
        """The current weights adapted on the pre-adaptation trajectories (all but the last),
        differentiably in the weights."""
        params = self.task_params(samples.trajectories[0].mask.shape[0])
        for step, (batch, advantages) in enumerate(zip(samples.trajectories[:-1],
                                                       samples.advantages[:-1])):
            params = self.adapt(params, batch, create_graph=not self.first_order,
                                advantages=advantages, step=step)
        return params

    def surrogate(self, samples: Samples) -> Tensor:
        """TRPO's loss at the current weights: minus the importance-weighted return of the
        adapted policies on the post-adaptation trajectories."""
        post = samples.trajectories[-1]
        ratio = torch.exp(self.log_probs(self.adapted(samples), post) - samples.log_probs[-1])
        return -masked_mean(ratio * samples.advantages[-1], post.mask).mean()

    def kl_after_adaptation(self, samples: Samples) -> Tensor:
        """Mean KL(pi_old' || pi_theta') at the post-adaptation observations."""
        post = samples.trajectories[-1]
        divergence = self.kl(samples.sampled_with[-1], self.adapted(samples), post.observations)
        return masked_mean(divergence, post.mask).mean()

    def meta_update(self, tasks: list, seed: int) -> dict[str, float]:
        samples = self.samples(tasks, seed)
        stats = trpo_step(list(self.policy.parameters()), lambda: self.surrogate(samples),
                          lambda: self.kl_after_adaptation(samples), self.max_kl, self.damping,
                          self.cg_iterations, self.backtrack_ratio, self.max_backtracks)
        stats["return_before"] = samples.trajectories[0].returns().mean().item()
        if self.inner_steps:
            stats["return_after"] = samples.trajectories[-1].returns().mean().item()
        return stats
