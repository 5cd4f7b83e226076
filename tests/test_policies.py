"""The meta-RL policies (metalearn/models/policies.py): MAML's Gaussian MLP and the categorical
one, checked against hand-written forward passes, under functional_call and vmap, and the
builder's choices and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.spaces import Box, Discrete, MultiDiscrete
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call, vmap

from metalearn.models.policies import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    build_policy,
    per_task_distribution,
)
from metalearn.paths import CONFIG_DIR
from tests.helpers import user_error

pytestmark = pytest.mark.usefixtures("one_thread")

OBSERVATIONS = Box(-np.inf, np.inf, (3,), dtype=np.float32)


def hand_mlp(params: dict, prefix: str, x: torch.Tensor, layers: int) -> torch.Tensor:
    """tanh(W x + b) for every layer but the last, which is linear."""
    for index in range(layers):
        x = x @ params[f"{prefix}.{2 * index}.weight"].T + params[f"{prefix}.{2 * index}.bias"]
        if index < layers - 1:
            x = torch.tanh(x)
    return x


def gaussian_log_density(mean, log_std, action):
    """log N(action; mean, diag(exp(log_std)^2)), summed over the action dimensions."""
    std = log_std.exp()
    return (-(action - mean) ** 2 / (2 * std ** 2) - log_std
            - 0.5 * math.log(2 * math.pi)).sum(-1)


def random_params(policy: nn.Module, generator: torch.Generator, tasks: int | None = None):
    """Random parameters named as the policy's, one copy per task when `tasks` is given."""
    shape = () if tasks is None else (tasks,)
    return {name: torch.randn(*shape, *p.shape, generator=generator, dtype=torch.double)
            for name, p in policy.named_parameters()}


def test_the_gaussian_policy_is_mamls_tanh_mlp_with_a_learned_state_independent_std():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2)
    linears = [m for m in policy.mean if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 100), (100, 100), (100, 2)]
    assert [type(m) for m in policy.mean] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    for linear in linears:  # Glorot-uniform weights, zero biases (rllab's)
        bound = math.sqrt(6 / (linear.in_features + linear.out_features))
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
        assert linear.bias.eq(0).all()
    distribution = policy(torch.randn(5, 4, 3))
    assert distribution.batch_shape == (5, 4) and distribution.event_shape == (2,)
    assert torch.allclose(distribution.stddev, torch.ones(5, 4, 2))  # init_std 1.0
    assert torch.allclose(GaussianMLPPolicy(3, 2, init_std=0.5)(torch.randn(3)).stddev,
                          torch.full((2,), 0.5))


def test_the_gaussian_policy_computes_the_hand_written_density():
    generator = torch.Generator().manual_seed(1)
    policy = GaussianMLPPolicy(3, 2, hidden_sizes=(4, 5)).double()
    params = random_params(policy, generator)
    observations = torch.randn(6, 3, generator=generator, dtype=torch.double)
    actions = torch.randn(6, 2, generator=generator, dtype=torch.double)
    log_probs = functional_call(policy, params, (observations,)).log_prob(actions)
    mean = hand_mlp(params, "mean", observations, 3)
    expected = gaussian_log_density(mean, params["log_std"], actions)
    torch.testing.assert_close(log_probs, expected)
    # the module's own parameters are untouched by functional_call, and give another answer
    assert not torch.allclose(policy(observations).log_prob(actions), expected)


def test_the_standard_deviation_never_falls_below_rllabs_floor():
    policy = GaussianMLPPolicy(3, 2, hidden_sizes=(4,))
    with torch.no_grad():
        policy.log_std.fill_(-50.0)
    assert torch.allclose(policy(torch.randn(3)).stddev, torch.full((2,), 1e-6))


def test_the_categorical_policy_is_a_softmax_of_a_tanh_mlp():
    generator = torch.Generator().manual_seed(2)
    policy = CategoricalMLPPolicy(3, 4, hidden_sizes=(5,)).double()
    params = random_params(policy, generator)
    observations = torch.randn(2, 7, 3, generator=generator, dtype=torch.double)
    distribution = functional_call(policy, params, (observations,))
    assert distribution.batch_shape == (2, 7)
    expected = torch.softmax(hand_mlp(params, "logits", observations, 2), dim=-1)
    torch.testing.assert_close(distribution.probs, expected)


@pytest.mark.parametrize("policy", [GaussianMLPPolicy(3, 2, hidden_sizes=(8, 8)),
                                    CategoricalMLPPolicy(3, 4, hidden_sizes=(8, 8))],
                         ids=["gaussian", "categorical"])
def test_vmap_over_tasks_equals_a_loop_over_tasks(policy):
    """One copy of the weights per task ([B, ...]) and each task's observations [B, E, d]:
    vmap and per_task_distribution give what each task's own functional_call gives."""
    generator = torch.Generator().manual_seed(3)
    policy = policy.double()
    tasks = 4
    params = random_params(policy, generator, tasks)
    observations = torch.randn(tasks, 6, 3, generator=generator, dtype=torch.double)
    looped = [functional_call(policy, {name: p[b] for name, p in params.items()},
                              (observations[b],)) for b in range(tasks)]
    actions = torch.stack([distribution.sample() for distribution in looped])

    def log_prob(task_params, task_observations, task_actions):
        return functional_call(policy, task_params, (task_observations,)).log_prob(task_actions)
    expected = torch.stack([d.log_prob(a) for d, a in zip(looped, actions)])
    torch.testing.assert_close(vmap(log_prob)(params, observations, actions), expected)

    batched = per_task_distribution(policy, params, observations)
    assert type(batched) is type(looped[0]) and batched.batch_shape == (tasks, 6)
    torch.testing.assert_close(batched.log_prob(actions), expected)
    torch.testing.assert_close(batched.entropy(), torch.stack([d.entropy() for d in looped]))


def test_gradients_flow_through_vmapped_per_task_parameters():
    generator = torch.Generator().manual_seed(4)
    policy = GaussianMLPPolicy(3, 2, hidden_sizes=(5,)).double()
    params = {name: p.requires_grad_() for name, p in random_params(policy, generator, 2).items()}
    observations = torch.randn(2, 4, 3, generator=generator, dtype=torch.double)
    actions = torch.randn(2, 4, 2, generator=generator, dtype=torch.double)
    per_task_distribution(policy, params, observations).log_prob(actions)[1].sum().backward()
    for name, p in params.items():  # task 1's loss reaches task 1's copy only
        assert p.grad[0].eq(0).all() and p.grad[1].ne(0).any(), name


def test_build_policy_follows_the_action_space():
    gaussian = build_policy(OBSERVATIONS, Box(-1, 1, (2,)), hidden_sizes=[7])
    assert isinstance(gaussian, GaussianMLPPolicy) and gaussian.log_std.shape == (2,)
    assert gaussian.mean[0].in_features == 3 and gaussian.mean[0].out_features == 7
    categorical = build_policy(OBSERVATIONS, Discrete(5), distribution="categorical")
    assert isinstance(categorical, CategoricalMLPPolicy)
    assert categorical.logits[-1].out_features == 5
    linear = build_policy(OBSERVATIONS, Discrete(2), hidden_sizes=[])
    assert [type(m) for m in linear.logits] == [nn.Linear]


def test_the_config_builds_mamls_policy():
    config = OmegaConf.load(CONFIG_DIR / "backbone" / "policy_mlp.yaml")
    policy = instantiate(config, observation_space=OBSERVATIONS, action_space=Box(-1, 1, (2,)))
    assert isinstance(policy, GaussianMLPPolicy)
    assert [m.out_features for m in policy.mean if isinstance(m, nn.Linear)] == [100, 100, 2]
    assert torch.allclose(policy.log_std.exp(), torch.ones(2))


def test_bad_choices_are_one_line_errors():
    box, discrete = Box(-1, 1, (2,)), Discrete(3)
    message = user_error(lambda: build_policy(OBSERVATIONS, discrete, distribution="gaussian"))
    assert "backbone.distribution=gaussian" in message and "Discrete(3)" in message
    assert "backbone.distribution=categorical" in message
    message = user_error(lambda: build_policy(OBSERVATIONS, box, distribution="categorical"))
    assert "backbone.distribution=categorical" in message and "Box(" in message
    assert "backbone.distribution=gaussian" in message
    message = user_error(lambda: build_policy(OBSERVATIONS, box, distribution="beta"))
    assert "backbone.distribution='beta'" in message and "auto, gaussian, categorical" in message
    for sizes in ([100, 0], [1.5], [True]):
        assert "backbone.hidden_sizes" in user_error(
            lambda: build_policy(OBSERVATIONS, box, hidden_sizes=sizes))
    assert "backbone.init_std=0" in user_error(lambda: build_policy(OBSERVATIONS, box,
                                                                    init_std=0))
    assert "MultiDiscrete" in user_error(lambda: build_policy(OBSERVATIONS,
                                                              MultiDiscrete([2, 2])))
    assert "observation space" in user_error(lambda: build_policy(Discrete(4), box))
