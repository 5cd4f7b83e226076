"""ProMP: Proximal Meta-Policy Search (Rothfuss, Lee, Clavera, Asfour and Abbeel 2019).

MAML-style meta-learning of a policy with two changes to the objective (the paper's section 5
and Algorithm 1; jonasrothfuss/ProMP, meta_algos/pro_mp.py):

- the inner step ascends the low-variance curvature (LVC) objective
      J_LVC(theta) = mean_t [ pi_theta(a|s) / pi_theta_o(a|s) * A(s, a) ]
  on trajectories sampled by theta_o. Its gradient at theta = theta_o is the policy gradient
  (so adaptation at test time is the same VPG step as MAML's), but its Hessian estimate is the
  unbiased, low-variance one that MAML's score-function objective lacks;
- the outer objective is PPO's clipped one on the post-adaptation trajectories, with a KL
  penalty on each inner step,
      J = mean over tasks of mean_t min(r A, clip(r, 1 - eps, 1 + eps) A)
          - mean over steps k of eta_k KL(pi_theta_o^k || pi_theta^k),
  r = pi_theta'(a|s) / pi_theta_o'(a|s), theta^k the weights that make step k (theta at k = 0)
  and theta_o^k those that sampled its trajectories; maximised by `ppo_epochs` Adam steps on
  the same samples. With `adaptive_inner_kl_penalty` each eta_k is halved when its KL falls
  below target_inner_kl / 1.5 and doubled above target_inner_kl * 1.5 after every meta-update
  (the reference code's rule; its released configs keep eta fixed at 5e-4).

The Adam state (checkpointed by Lightning) and the eta_k (a buffer of the state dict) make a
resumed run continue exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from metalearn.algorithms.meta_rl import MetaRLModule, Samples, TaskParams
from metalearn.algorithms.policy_gradient import masked_mean
from metalearn.data.env_family import EnvFamily
from metalearn.errors import UserError, check_positive_number, check_whole_number, is_number


def likelihood_ratio(log_probs: Tensor, old_log_probs: Tensor, mask: Tensor) -> Tensor:
    """pi / pi_old per step, 1 at masked steps (padding, whose log-probabilities may be far
    apart)."""
    return torch.exp((log_probs - old_log_probs) * mask)


def lvc_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor,
             mask: Tensor) -> Tensor:
    """Each task's -J_LVC ([B]): minus the mean over its steps of pi / pi_old * A."""
    ratio = likelihood_ratio(log_probs, old_log_probs.detach(), mask)
    return -masked_mean(ratio * advantages.detach(), mask)


def clipped_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor,
                 clip: float) -> Tensor:
    """Each task's minus PPO's clipped objective ([B]): minus the mean over its steps of
    min(r A, clip(r, 1 - clip, 1 + clip) A), r = pi / pi_old."""
    ratio = likelihood_ratio(log_probs, old_log_probs.detach(), mask)
    advantages = advantages.detach()
    clipped = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -masked_mean(clipped, mask)


def adapted_kl_coefficients(coefficients: Tensor, kls: Tensor, target: float) -> Tensor:
    """The reference code's rule: each coefficient halved where its KL is below target / 1.5,
    doubled where it is above target * 1.5."""
    return torch.where(kls < target / 1.5, coefficients / 2,
                       torch.where(kls > target * 1.5, coefficients * 2, coefficients))


class Objective(NamedTuple):
    loss: Tensor  # the clipped objective's loss plus the inner KL penalty
    inner_kls: Tensor  # [inner_steps]: mean KL of each inner step
    adapted: TaskParams


class ProMP(MetaRLModule):
    """Args (besides MetaRLModule's, whose first_order does not apply):
        optimizer: factory `params, lr -> Optimizer` of the outer optimiser (a `_partial_`
            config; Adam by default, ProMP's).
        outer_lr: its learning rate (ProMP: 1e-3).
        ppo_epochs: Adam steps on each meta-batch's samples (ProMP: 5).
        clip_eps: the clipping range of the outer objective (ProMP's configs: 0.3).
        init_inner_kl_penalty: the starting KL coefficient of each inner step (5e-4).
        adaptive_inner_kl_penalty: adapt the coefficients towards target_inner_kl (the released
            configs: false).
        target_inner_kl: the inner steps' target KL (0.01).
    """

    def __init__(self, backbone: nn.Module, envs: EnvFamily, inner_lr: float = 0.1,
                 inner_steps: int = 1, test_inner_steps: int = 3, gamma: float = 0.99,
                 gae_lambda: float = 1.0, episodes_per_task: int = 20,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 outer_lr: float = 1e-3, ppo_epochs: int = 5, clip_eps: float = 0.3,
                 init_inner_kl_penalty: float = 5e-4, adaptive_inner_kl_penalty: bool = False,
                 target_inner_kl: float = 0.01, later_inner_lr: float | None = 0.05):
        super().__init__(backbone, envs, inner_lr, inner_steps, test_inner_steps, gamma,
                         gae_lambda, episodes_per_task, later_inner_lr=later_inner_lr)
        check_whole_number("algorithm.inner_steps", inner_steps)  # ProMP adapts in training
        self.ppo_epochs = check_whole_number("algorithm.ppo_epochs", ppo_epochs)
        self.outer_lr = check_positive_number("algorithm.outer_lr", outer_lr)
        self.clip_eps = check_positive_number("algorithm.clip_eps", clip_eps)
        self.target_inner_kl = check_positive_number("algorithm.target_inner_kl",
                                                     target_inner_kl)
        if not (is_number(init_inner_kl_penalty) and init_inner_kl_penalty >= 0):
            raise UserError(f"algorithm.init_inner_kl_penalty={init_inner_kl_penalty!r} must be "
                            "a number >= 0")
        self.save_hyperparameters(ignore=["backbone", "envs", "optimizer"])
        self.optimizer_factory = optimizer or torch.optim.Adam
        self.adaptive_inner_kl_penalty = adaptive_inner_kl_penalty
        self.register_buffer("inner_kl_coefficients",
                             torch.full((inner_steps,), float(init_inner_kl_penalty),
                                        dtype=torch.float64))
        self.outer_optimizer = self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.policy.parameters(), lr=self.outer_lr)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the one meta_update steps, so that Lightning checkpoints and restores its state
        return self.outer_optimizer

    def objective(self, samples: Samples) -> Objective:
        """The loss to minimise at the current weights: minus ProMP's objective."""
        params = self.task_params(samples.trajectories[0].mask.shape[0])
        inner_kls = []
        for step in range(self.inner_steps):
            batch = samples.trajectories[step]
            divergence = self.kl(samples.sampled_with[step], params, batch.observations)
            inner_kls.append(masked_mean(divergence, batch.mask).mean())
            params = self.inner_step(params, self.lvc(samples, step), create_graph=True,
                                     lr=self.inner_lr if step == 0 else self.later_inner_lr)
        batch = samples.trajectories[-1]
        outer = clipped_loss(self.log_probs(params, batch), samples.log_probs[-1],
                             samples.advantages[-1], batch.mask, self.clip_eps).mean()
        inner_kls = torch.stack(inner_kls)
        penalty = (self.inner_kl_coefficients.to(outer) * inner_kls).mean()
        return Objective(outer + penalty, inner_kls.detach(), params)

    def lvc(self, samples: Samples, step: int) -> Callable[[TaskParams], Tensor]:
        """params -> each task's LVC loss on the trajectories of inner step `step`."""
        batch = samples.trajectories[step]
        return lambda params: lvc_loss(self.log_probs(params, batch), samples.log_probs[step],
                                       samples.advantages[step], batch.mask)

    def meta_update(self, tasks: list, seed: int) -> dict[str, float]:
        samples = self.samples(tasks, seed)
        for epoch in range(self.ppo_epochs):
            loss = self.objective(samples).loss
            if epoch == 0:
                loss_before = loss.item()
            self.outer_optimizer.zero_grad()
            loss.backward()
            self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            after = self.objective(samples)
            post = samples.trajectories[-1]
            outer_kl = masked_mean(self.kl(samples.sampled_with[-1], after.adapted,
                                           post.observations), post.mask).mean()
        if self.adaptive_inner_kl_penalty:
            self.inner_kl_coefficients.copy_(adapted_kl_coefficients(
                self.inner_kl_coefficients, after.inner_kls.to(self.inner_kl_coefficients),
                self.target_inner_kl))
        return {"return_before": samples.trajectories[0].returns().mean().item(),
                "return_after": post.returns().mean().item(),
                "loss_before": loss_before, "loss_after": after.loss.item(),
                "outer_kl": outer_kl.item(), "inner_kl": after.inner_kls.mean().item(),
                "inner_kl_coefficient": self.inner_kl_coefficients.mean().item()}
