"""The Lightning base every meta-reinforcement-learning algorithm derives from.

A task is an environment (metalearn/data/env_family.py); a meta-training step takes
`RLBatch(tasks, seed)` (metalearn/data/rl_datamodule.py) and makes every rollout it needs from
`seed`. What all algorithms share lives here:

- adaptation (MAML's inner loop, Finn et al. 2017 section 5.3): one vanilla policy-gradient step
  per task on that task's trajectories, the advantages from a linear feature baseline fitted per
  task (Duan et al. 2016) and normalised per task. Tasks are adapted together: the weights are
  held once per task ([B, ...]) and the policy runs on each task's own copy under
  torch.func.vmap; the step keeps its graph (create_graph) for second-order meta-gradients;
- `return_by_steps`, the evaluation of MAML's figures: each task's average return before
  adaptation and after 1, 2, ... steps, each step adapting on fresh rollouts of the policy it has
  reached; validation reports the return after `test_inner_steps` steps with its 95% interval
  over tasks, the meta-test each task's whole row (`test_returns`);
- seeds: the rollouts of adaptation step k of a batch seeded s are seeded by
  `rollout_seed(s, k)`, so evaluation is reproducible and every algorithm, seed and checkpoint is
  scored on the same tasks with the same rollout seeds.

An algorithm implements `meta_update(tasks, seed)`: one outer step, returning its statistics.
The algorithms update the weights themselves (TRPO's line search, ProMP's several epochs), under
Lightning's manual optimisation; one meta-update counts as one step of the run.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from metalearn.algorithms.policy_gradient import (
    LinearFeatureBaseline,
    discounted_returns,
    gae_advantages,
    normalized,
    policy_gradient_loss,
)
from metalearn.data.env_family import EnvFamily
from metalearn.data.rl_datamodule import RLBatch
from metalearn.data.rollouts import PolicyFunction, Trajectories
from metalearn.errors import (
    NonFiniteError,
    UserError,
    check_positive_number,
    check_whole_number,
    is_number,
)
from metalearn.evaluation.statistics import mean_and_ci95
from metalearn.models.policies import per_task_distribution

#: per-task weights: each of the policy's parameters by name, once per task ([B, ...])
TaskParams = dict[str, Tensor]


class Samples(NamedTuple):
    """A meta-batch's rollouts, one entry per adaptation step (the last: after adaptation),
    with what the outer objectives take as constants."""

    trajectories: list[Trajectories]
    sampled_with: list[TaskParams]  # the (detached) weights that sampled each step's rollouts
    log_probs: list[Tensor]  # [B, E, T]: their actions' log-probabilities under those weights
    advantages: list[Tensor]  # [B, E, T] (MetaRLModule.advantages)


def rollout_seed(seed: int, step: int) -> int:
    """The seed of the rollouts made after `step` adaptation steps in a batch seeded `seed`: a
    hash of both (numpy's SeedSequence, 31 bits), so that neighbouring seeds and steps do not
    give shifted copies of each other's episodes."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0] >> 1)


class MetaRLModule(L.LightningModule):
    """Base of the meta-RL algorithms.

    Args:
        backbone: the policy (metalearn/models/policies.py; the run builder makes it for the
            env's spaces).
        envs: the env family whose tasks the batches hold (injected by the run builder).
        inner_lr: step size of each adaptation step (MAML: 0.1).
        inner_steps: adaptation steps during meta-training (MAML: 1).
        test_inner_steps: adaptation steps at validation and test (MAML's figures: up to 3).
        gamma: discount of the returns (MAML: 0.99).
        gae_lambda: lambda of generalised advantage estimation (1: returns minus the baseline,
            MAML's).
        episodes_per_task: episodes rolled out per task for each adaptation step and for the
            post-adaptation evaluation (MAML: 20).
        first_order: the meta-gradient leaves out the second derivatives of the inner step.
        later_inner_lr: step size of the adaptation steps after the first (MAML's test-time
            protocol halves it: 0.05 after a first step of 0.1); None: inner_lr for every step.
    """

    task_type = "reinforcement"
    #: what the run's checks ask of every algorithm (metalearn/algorithms/base.py's meaning)
    supported_task_types: tuple[str, ...] = ("reinforcement",)
    adapts_by_steps = True

    def __init__(self, backbone: nn.Module, envs: EnvFamily, inner_lr: float = 0.1,
                 inner_steps: int = 1, test_inner_steps: int = 3, gamma: float = 0.99,
                 gae_lambda: float = 1.0, episodes_per_task: int = 20,
                 first_order: bool = False, later_inner_lr: float | None = 0.05):
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.envs = backbone, envs
        self.inner_lr = check_positive_number("algorithm.inner_lr", inner_lr)
        self.later_inner_lr = (inner_lr if later_inner_lr is None else
                               check_positive_number("algorithm.later_inner_lr", later_inner_lr))
        self.inner_steps = check_whole_number("algorithm.inner_steps", inner_steps, minimum=0)
        self.test_inner_steps = check_whole_number("algorithm.test_inner_steps",
                                                   test_inner_steps, minimum=0)
        self.episodes_per_task = check_whole_number("algorithm.episodes_per_task",
                                                    episodes_per_task)
        if not (is_number(gamma) and 0 < gamma <= 1):
            raise UserError(f"algorithm.gamma={gamma!r} must be a number in (0, 1]")
        if not (is_number(gae_lambda) and 0 <= gae_lambda <= 1):
            raise UserError(f"algorithm.gae_lambda={gae_lambda!r} must be a number in [0, 1]")
        self.gamma, self.gae_lambda, self.first_order = gamma, gae_lambda, first_order
        self.val_returns: list[Tensor] = []
        #: the meta-test's returns, one [B, test_inner_steps + 1] tensor per test batch, in order
        self.test_returns: list[Tensor] = []

    @property
    def validation_metrics(self) -> list[str]:
        """The meta-val scores a run can monitor (higher is better)."""
        return ["val/return"]

    # The policy on per-task weights -----------------------------------------------------------
    def task_params(self, tasks: int, differentiable: bool = True) -> TaskParams:
        """The policy's weights once per task: views of them that carry the meta-gradient
        (`differentiable`), or copies that keep today's values when the weights are updated."""
        params = {}
        for name, parameter in self.policy.named_parameters():
            shared = parameter if differentiable else parameter.detach().clone()
            params[name] = shared.expand(tasks, *parameter.shape)
        return params

    def policy_function(self, params: TaskParams) -> PolicyFunction:
        """Observations [B, ..., d] -> each task's action distribution on its own weights
        (batch shape [B, ...])."""
        return lambda observations: per_task_distribution(self.policy, params, observations)

    def log_probs(self, params: TaskParams, trajectories: Trajectories) -> Tensor:
        """log pi(a | s) of every step under each task's weights: [B, E, T]."""
        return self.policy_function(params)(trajectories.observations).log_prob(
            trajectories.actions)

    def kl(self, old_params: TaskParams, params: TaskParams, observations: Tensor) -> Tensor:
        """KL(pi_old(. | s) || pi(. | s)) at every observation, per task: [B, E, T]."""
        return torch.distributions.kl_divergence(self.policy_function(old_params)(observations),
                                                 self.policy_function(params)(observations))

    def rollout(self, params: TaskParams, tasks: list, seed: int) -> Trajectories:
        """`episodes_per_task` episodes of each task, on its own weights."""
        return self.envs.rollout(self.policy_function(params), tasks, self.episodes_per_task,
                                 seed, device=self.device)

    # Adaptation -------------------------------------------------------------------------------
    def advantages(self, trajectories: Trajectories) -> Tensor:
        """Advantages of every step [B, E, T]: GAE on a linear feature baseline fitted to each
        task's discounted returns, normalised per task."""
        returns = discounted_returns(trajectories.rewards, trajectories.mask, self.gamma)
        values = LinearFeatureBaseline.fit_values(trajectories.observations, trajectories.mask,
                                                  returns)
        advantages = gae_advantages(trajectories.rewards, values, trajectories.mask,
                                    self.gamma, self.gae_lambda)
        return normalized(advantages, trajectories.mask)

    def inner_step(self, params: TaskParams, loss: Callable[[TaskParams], Tensor],
                   create_graph: bool, lr: float) -> TaskParams:
        """One gradient step of size `lr` on each task's loss (`loss(params)` -> [B]).
        create_graph keeps the step differentiable (second order); otherwise the gradient is a
        constant, and the step passes the meta-gradient through unchanged (first order).
        Weights that carry no graph (test time), or all weights when called under
        torch.no_grad, are differentiated as constants: there is no meta-gradient to carry."""
        meta_gradient = torch.is_grad_enabled()
        with torch.enable_grad():
            params = {name: value if meta_gradient and value.requires_grad
                      else value.detach().requires_grad_() for name, value in params.items()}
            gradients = torch.autograd.grad(loss(params).sum(), list(params.values()),
                                            create_graph=create_graph and meta_gradient)
        return {name: value - lr * gradient
                for (name, value), gradient in zip(params.items(), gradients)}

    def adapt(self, params: TaskParams, trajectories: Trajectories, create_graph: bool,
              advantages: Tensor | None = None, step: int = 0) -> TaskParams:
        """One vanilla policy-gradient step per task on its trajectories (MAML's inner loop),
        adaptation step number `step` (0: the first, of size inner_lr; later ones
        later_inner_lr); `advantages` where already computed (`advantages(trajectories)`)."""
        if advantages is None:
            advantages = self.advantages(trajectories)
        return self.inner_step(
            params, lambda params: policy_gradient_loss(self.log_probs(params, trajectories),
                                                        advantages, trajectories.mask),
            create_graph, self.inner_lr if step == 0 else self.later_inner_lr)

    def adaptation_rollouts(self, tasks: list, seed: int, steps: int,
               ) -> tuple[list[Trajectories], list[TaskParams]]:
        """The rollouts of the current policy and of each of `steps` adaptation steps (each
        adapting on the previous rollouts), with the weights that made them: steps + 1 of each,
        the weights detached."""
        params = self.task_params(len(tasks), differentiable=False)
        trajectories, sampled_with = [], []
        for step in range(steps + 1):
            trajectories.append(self.rollout(params, tasks, rollout_seed(seed, step)))
            sampled_with.append(params)
            if step < steps:
                params = detached(self.adapt(params, trajectories[-1], create_graph=False,
                                             step=step))
        return trajectories, sampled_with

    def samples(self, tasks: list, seed: int) -> Samples:
        """The rollouts of a meta-training step: before adaptation and after each of the
        inner_steps steps."""
        trajectories, sampled_with = self.adaptation_rollouts(tasks, seed, self.inner_steps)
        return Samples(trajectories, sampled_with,
                       [self.log_probs(params, batch)
                        for params, batch in zip(sampled_with, trajectories)],
                       [self.advantages(batch) for batch in trajectories])

    def return_by_steps(self, tasks: list, seed: int, steps: int) -> Tensor:
        """[B, steps + 1]: each task's mean return over `episodes_per_task` episodes before
        adaptation (column 0) and after 1 .. steps policy-gradient steps (MAML's figure)."""
        trajectories, _ = self.adaptation_rollouts(tasks, seed, steps)
        return torch.stack([batch.returns().mean(1) for batch in trajectories], 1)

    # Training, validation and test ------------------------------------------------------------
    @abstractmethod
    def meta_update(self, tasks: list, seed: int) -> dict[str, float]:
        """One outer step on `tasks`, every rollout seeded from `seed`; its statistics."""

    def training_step(self, batch: RLBatch, batch_idx: int) -> None:
        stats = self.meta_update(batch.tasks, batch.seed)
        broken = [name for name, value in stats.items() if not math.isfinite(value)]
        if broken:
            raise NonFiniteError(f"the meta-update's {', '.join(broken)} became "
                                 f"{stats[broken[0]]} at step {self.global_step}")
        for name in ("return_before", "return_after"):
            if name in stats:
                self.log(f"train/{name}", stats.pop(name), prog_bar=True,
                         batch_size=len(batch.tasks))
        self.log_dict({f"train/{name}": value for name, value in stats.items()},
                      batch_size=len(batch.tasks))
        self.count_step()

    def count_step(self) -> None:
        """Lightning counts a run's steps (max_steps, eval_frequency, checkpoints, where a
        resumed data stream starts) by its optimiser's steps; the algorithms have updated the
        weights already, so one step of the optimiser with no gradients left (which changes
        nothing) counts the meta-update."""
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()

    def on_validation_epoch_start(self) -> None:
        self.val_returns = []

    def validation_step(self, batch: RLBatch, batch_idx: int) -> None:
        self.val_returns.append(self.return_by_steps(batch.tasks, batch.seed,
                                                     self.test_inner_steps))

    def on_validation_epoch_end(self) -> None:
        returns = torch.cat(self.val_returns)
        after, after_ci95 = mean_and_ci95(returns[:, -1])
        scores = {"val/return": after, "val/return_ci95": after_ci95,
                  "val/return_before": returns[:, 0].mean().item()}
        # one task has no interval: left out rather than logged as a certainty
        self.log_dict({key: value for key, value in scores.items() if value is not None},
                      prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self.test_returns = []

    def test_step(self, batch: RLBatch, batch_idx: int) -> None:
        self.test_returns.append(self.return_by_steps(batch.tasks, batch.seed,
                                                      self.test_inner_steps).cpu())

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        """The outer optimiser; None where the algorithm updates the weights without one
        (TRPO)."""
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        return self.make_optimizer()


def detached(params: TaskParams) -> TaskParams:
    return {name: value.detach() for name, value in params.items()}
