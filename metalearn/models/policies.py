"""Stochastic policies for meta-reinforcement learning: MLPs whose output is an action
distribution (`backbone=policy_mlp`).

`GaussianMLPPolicy` (continuous actions) is the MAML paper's (Finn et al. 2017, section 5.3; rllab's
MAMLGaussianMLPPolicy): two hidden layers of 100 (tanh, rllab's default nonlinearity; MAML's
released scripts passed ReLU), a linear mean, and one log standard
deviation per action dimension that no observation changes, learned from log(init_std) (1.0 in
the paper) and floored at a standard deviation of 1e-6 (rllab's min_std). `CategoricalMLPPolicy`
(discrete actions) has the same trunk and a softmax over its outputs. Weights start Glorot-uniform
and biases at zero, as rllab's.

Both are pure functions of their parameters, so the inner adaptation runs them through
`torch.func.functional_call` with adapted weights and through `torch.func.vmap` with one copy of
the weights per task; a vmapped function must return tensors, so `per_task_distribution` takes
each policy's distribution apart inside vmap (`distribution_tensors`) and builds it again outside
(`distribution`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import gymnasium
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal
from torch.func import functional_call, vmap

from metalearn.errors import UserError, check_positive_number

#: rllab's min_std: a standard deviation the learned one never goes below
MIN_STD = 1e-6
DISTRIBUTIONS = ("auto", "gaussian", "categorical")


def tanh_mlp(inputs: int, hidden_sizes: Sequence[int], outputs: int) -> nn.Sequential:
    """Linear layers with tanh between them, Glorot-uniform weights and zero biases (rllab's)."""
    sizes = [inputs, *hidden_sizes, outputs]
    layers: list[nn.Module] = []
    for a, b in pairwise(sizes):
        linear = nn.Linear(a, b)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.Tanh()]
    return nn.Sequential(*layers[:-1])  # no tanh on the output


class GaussianMLPPolicy(nn.Module):
    """A diagonal Gaussian over `action_dim` actions: a tanh MLP's mean and a learned log standard
    deviation shared by all observations."""

    def __init__(self, observation_dim: int, action_dim: int,
                 hidden_sizes: Sequence[int] = (100, 100), init_std: float = 1.0):
        super().__init__()
        self.mean = tanh_mlp(observation_dim, hidden_sizes, action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, observations: Tensor) -> Independent:
        mean = self.mean(observations)
        std = self.log_std.clamp(min=math.log(MIN_STD)).exp().expand_as(mean)
        return self.distribution(mean, std)

    @staticmethod
    def distribution(mean: Tensor, std: Tensor) -> Independent:
        """Normal over the last (action) dimension, every other dimension a batch dimension."""
        return Independent(Normal(mean, std), 1)

    @staticmethod
    def distribution_tensors(distribution: Independent) -> tuple[Tensor, Tensor]:
        return distribution.base_dist.loc, distribution.base_dist.scale


class CategoricalMLPPolicy(nn.Module):
    """A softmax over `num_actions` actions, its logits a tanh MLP's output."""

    def __init__(self, observation_dim: int, num_actions: int,
                 hidden_sizes: Sequence[int] = (100, 100)):
        super().__init__()
        self.logits = tanh_mlp(observation_dim, hidden_sizes, num_actions)

    def forward(self, observations: Tensor) -> Categorical:
        return self.distribution(self.logits(observations))

    @staticmethod
    def distribution(logits: Tensor) -> Categorical:
        return Categorical(logits=logits)

    @staticmethod
    def distribution_tensors(distribution: Categorical) -> tuple[Tensor]:
        return (distribution.logits,)


def per_task_distribution(policy: GaussianMLPPolicy | CategoricalMLPPolicy,
                          params: dict[str, Tensor], observations: Tensor) -> Distribution:
    """The action distribution of each task's own copy of `policy`: `params` holds every
    parameter once per task ([B, ...], as named by policy.named_parameters()), `observations`
    are [B, ..., observation_dim]; the distribution's batch shape is [B, ...]."""
    def tensors(task_params: dict[str, Tensor], task_observations: Tensor) -> tuple[Tensor, ...]:
        return policy.distribution_tensors(functional_call(policy, task_params,
                                                           (task_observations,)))
    return policy.distribution(*vmap(tensors)(params, observations))


def build_policy(observation_space: gymnasium.spaces.Space, action_space: gymnasium.spaces.Space,
                 hidden_sizes: Sequence[int] = (100, 100), distribution: str = "auto",
                 init_std: float = 1.0) -> GaussianMLPPolicy | CategoricalMLPPolicy:
    """The policy for an env's spaces (the run builder passes them): a Gaussian for continuous
    actions (a Box), a categorical for discrete ones (Discrete), unless `distribution` names one;
    a choice the action space cannot take is refused in one line."""
    if distribution not in DISTRIBUTIONS:
        raise UserError(f"backbone.distribution={distribution!r} is not one of "
                        f"{', '.join(DISTRIBUTIONS)}")
    hidden_sizes = list(hidden_sizes)
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1
               for size in hidden_sizes):
        raise UserError(f"backbone.hidden_sizes={hidden_sizes} must be whole numbers >= 1")
    check_positive_number("backbone.init_std", init_std)
    if not (isinstance(observation_space, gymnasium.spaces.Box)
            and len(observation_space.shape) == 1):
        raise UserError(f"backbone=policy_mlp takes observations that are one vector (a Box of "
                        f"shape (d,)); the env's observation space is {observation_space}")
    observation_dim = observation_space.shape[0]
    if isinstance(action_space, gymnasium.spaces.Discrete):
        if distribution == "gaussian":
            raise UserError(f"backbone.distribution=gaussian needs continuous actions, but the "
                            f"env's action space is {action_space}; use "
                            "backbone.distribution=categorical (or auto)")
        return CategoricalMLPPolicy(observation_dim, int(action_space.n), hidden_sizes)
    if isinstance(action_space, gymnasium.spaces.Box) and len(action_space.shape) == 1:
        if distribution == "categorical":
            raise UserError(f"backbone.distribution=categorical needs discrete actions, but the "
                            f"env's action space is {action_space}; use "
                            "backbone.distribution=gaussian (or auto)")
        return GaussianMLPPolicy(observation_dim, action_space.shape[0], hidden_sizes, init_std)
    raise UserError(f"backbone=policy_mlp acts in a Box of shape (d,) or a Discrete action space; "
                    f"the env's action space is {action_space}")
