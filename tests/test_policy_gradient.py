"""The policy-gradient estimators and the TRPO step (metalearn/algorithms/policy_gradient.py),
each against an independent reference: hand loops, a tiny MDP enumerated exactly, numpy's least
squares, torch's linear solve and explicit Hessians, in float64."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian
from torch.distributions import kl_divergence
from torch.func import functional_call

from metalearn.algorithms.policy_gradient import (
    LinearFeatureBaseline,
    conjugate_gradient,
    discounted_returns,
    fisher_vector_product,
    gae_advantages,
    normalized,
    policy_gradient_loss,
    trpo_step,
)
from metalearn.models.policies import GaussianMLPPolicy
from tests.helpers import flat

pytestmark = pytest.mark.usefixtures("one_thread")

DOUBLE = torch.double
#: episodes of 5 steps that end after 5, 2, 1 and 4 steps (the step that ended one included)
LENGTHS = [[5, 2], [1, 4]]


def episode_mask(lengths: list[list[int]], horizon: int = 5) -> torch.Tensor:
    steps = torch.arange(horizon)
    return (steps < torch.tensor(lengths).unsqueeze(-1)).to(DOUBLE)


def after_the_end(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`values` with NaN wherever the episode had ended: nothing there may reach a result."""
    return values.masked_fill(mask == 0, math.nan)


def random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DOUBLE)


# Returns and advantages ---------------------------------------------------------------------------

def hand_returns(rewards, mask, gamma):
    out = torch.zeros_like(rewards)
    for index in itertools.product(*map(range, rewards.shape[:-1])):
        for t in range(rewards.shape[-1]):
            if mask[index][t]:
                out[index][t] = sum(gamma ** (k - t) * rewards[index][k]
                                    for k in range(t, rewards.shape[-1]) if mask[index][k])
    return out


def test_discounted_returns_match_a_hand_loop_with_episodes_ending_early():
    mask = episode_mask(LENGTHS)
    rewards = after_the_end(random(2, 2, 5), mask)
    for gamma in (0.9, 1.0, 0.0):
        expected = hand_returns(rewards.nan_to_num(), mask, gamma)
        torch.testing.assert_close(discounted_returns(rewards, mask, gamma), expected)


def test_gae_matches_a_hand_loop_and_is_returns_minus_values_at_lambda_one():
    mask = episode_mask(LENGTHS)
    rewards, values = after_the_end(random(2, 2, 5, seed=1), mask), random(2, 2, 5, seed=2)
    gamma, lam = 0.95, 0.7
    expected = torch.zeros_like(values)
    for b, e in itertools.product(range(2), range(2)):
        end = LENGTHS[b][e]
        deltas = [rewards[b, e, t] + gamma * (values[b, e, t + 1] if t + 1 < end else 0.0)
                  - values[b, e, t] for t in range(end)]
        for t in range(end):
            expected[b, e, t] = sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, end))
    torch.testing.assert_close(gae_advantages(rewards, values, mask, gamma, lam), expected)
    returns = discounted_returns(rewards, mask, gamma)
    torch.testing.assert_close(gae_advantages(rewards, values, mask, gamma, 1.0),
                               (returns - values) * mask)


def test_advantages_are_normalized_per_task_over_the_steps_taken():
    mask = episode_mask(LENGTHS)
    advantages = after_the_end(3 + 2 * random(2, 2, 5, seed=3), mask)
    out = normalized(advantages, mask)
    for b in range(2):
        taken = advantages[b][mask[b] > 0].numpy()
        expected = (taken - taken.mean()) / (taken.std() + 1e-8)  # population std, as rllab
        np.testing.assert_allclose(out[b][mask[b] > 0].numpy(), expected)
    assert out[mask == 0].eq(0).all()


def test_the_loss_is_minus_the_mean_over_each_tasks_steps_of_log_prob_times_advantage():
    mask = episode_mask(LENGTHS)
    log_probs = after_the_end(random(2, 2, 5, seed=4), mask)
    advantages = after_the_end(random(2, 2, 5, seed=5), mask)
    expected = [-sum(log_probs[b, e, t] * advantages[b, e, t] for e in range(2)
                     for t in range(LENGTHS[b][e])) / sum(LENGTHS[b]) for b in range(2)]
    torch.testing.assert_close(policy_gradient_loss(log_probs, advantages, mask),
                               torch.stack(expected))


# The estimator on a tiny MDP, enumerated exactly -----------------------------------------------

#: two states, two actions, horizon 2: where each episode starts, where each action leads, and
#: what it earns
START = torch.tensor([0.6, 0.4], dtype=DOUBLE)
TRANSITIONS = torch.tensor([[[0.9, 0.1], [0.2, 0.8]],  # [s, a, s']
                            [[0.5, 0.5], [0.3, 0.7]]], dtype=DOUBLE)
REWARDS = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=DOUBLE)  # [s, a]
BASELINE = torch.tensor([[0.4, -1.1], [0.8, 0.2]], dtype=DOUBLE)  # [t, s]: any baseline of the state


def expected_return(theta: torch.Tensor) -> torch.Tensor:
    """J(theta) = sum over the 16 trajectories of their probability times their return."""
    policy = torch.softmax(theta, dim=1)
    total = torch.zeros((), dtype=DOUBLE)
    for s0, a0, s1, a1 in itertools.product(range(2), repeat=4):
        probability = (START[s0] * policy[s0, a0] * TRANSITIONS[s0, a0, s1] * policy[s1, a1])
        total = total + probability * (REWARDS[s0, a0] + REWARDS[s1, a1])
    return total


def test_the_estimators_expectation_is_the_exact_policy_gradient_on_a_tiny_mdp():
    """Every trajectory of horizon 2 is a task of one episode; the losses weighted by the
    trajectories' probabilities (not sampled) have gradient -dJ/dtheta / T, whatever the
    state baseline."""
    theta = torch.tensor([[0.3, -0.2], [-0.7, 0.5]], dtype=DOUBLE, requires_grad=True)
    exact = torch.autograd.grad(expected_return(theta), theta)[0]

    trajectories = torch.tensor(list(itertools.product(range(2), repeat=4)))  # s0 a0 s1 a1
    states, actions = trajectories[:, [0, 2]], trajectories[:, [1, 3]]
    log_policy = torch.log_softmax(theta, dim=1)
    with torch.no_grad():
        policy = log_policy.exp()
        probability = (START[states[:, 0]] * policy[states[:, 0], actions[:, 0]]
                       * TRANSITIONS[states[:, 0], actions[:, 0], states[:, 1]]
                       * policy[states[:, 1], actions[:, 1]])
    assert torch.isclose(probability.sum(), torch.ones((), dtype=DOUBLE))
    shape = (16, 1, 2)  # [B, E, T]
    rewards = REWARDS[states, actions].reshape(shape)
    values = BASELINE[torch.arange(2), states].reshape(shape)
    mask = torch.ones(shape, dtype=DOUBLE)
    advantages = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    log_probs = log_policy[states, actions].reshape(shape)
    losses = policy_gradient_loss(log_probs, advantages, mask)
    estimated = torch.autograd.grad((probability * losses).sum(), theta)[0]
    torch.testing.assert_close(estimated, -exact / 2)


# The linear feature baseline ----------------------------------------------------------------------

def hand_features(observation: np.ndarray, step: int) -> list[float]:
    o = np.clip(observation, -10, 10)
    t = step / 100
    return [*o, *o ** 2, t, t ** 2, t ** 3, 1.0]


def rllab_fit(observations, mask, returns, regulariser=1e-5):
    """rllab's fit with numpy, per task: the rows of the steps taken, then lstsq on the
    regularised normal equations; the fitted values at the steps taken, 0 elsewhere."""
    values = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        rows = [(e, t) for e in range(mask.shape[1]) for t in range(mask.shape[2]) if mask[b, e, t]]
        features = np.array([hand_features(observations[b, e, t], t) for e, t in rows])
        targets = np.array([returns[b, e, t] for e, t in rows])
        gram = features.T @ features + regulariser * np.eye(features.shape[1])
        coefficients = np.linalg.lstsq(gram, features.T @ targets, rcond=None)[0]
        for e, t in rows:
            values[b, e, t] = np.dot(hand_features(observations[b, e, t], t), coefficients)
    return values


def baseline_data():
    mask = episode_mask([[5, 3, 4], [2, 5, 1]])
    observations = 4 * random(2, 3, 5, 2, seed=6)  # some beyond the +-10 clip
    observations[0, 0, 0, 0], observations[1, 1, 2, 1] = 25.0, -13.0
    observations = observations.masked_fill(mask.unsqueeze(-1) == 0, math.nan)
    returns = after_the_end(random(2, 3, 5, seed=7), mask)
    return observations, mask, returns


def test_the_baseline_is_rllabs_least_squares_fit_per_task():
    observations, mask, returns = baseline_data()
    values = LinearFeatureBaseline.fit_values(observations, mask, returns)
    expected = rllab_fit(observations.numpy(), mask.numpy(), returns.numpy())
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-7, atol=1e-9)
    # one fit per task: another task's returns change nothing
    changed = returns.clone()
    changed[1] += 5.0
    torch.testing.assert_close(LinearFeatureBaseline.fit_values(observations, mask, changed)[0],
                               values[0])


def test_the_baseline_returns_float32_without_a_graph():
    observations, mask, returns = baseline_data()
    returns = returns.float().requires_grad_()
    values = LinearFeatureBaseline.fit_values(observations.float(), mask.float(), returns)
    assert values.dtype == torch.float32 and not values.requires_grad


def test_singular_features_give_a_finite_fit():
    """Constant observations make the o, o^2 and 1 columns one, and a zero observation column
    adds two zero columns: the unregularised normal equations are singular."""
    horizon = 50
    observations = torch.zeros(1, 2, horizon, 2, dtype=DOUBLE)
    observations[..., 0] = 0.5
    mask = torch.ones(1, 2, horizon, dtype=DOUBLE)
    t = torch.arange(horizon, dtype=DOUBLE) / 100
    returns = (1 + 2 * t - 3 * t ** 2 + t ** 3).expand(1, 2, horizon)
    features = LinearFeatureBaseline.features(observations)[0, 0]
    assert torch.linalg.matrix_rank(features.T @ features) < features.shape[1]
    values = LinearFeatureBaseline.fit_values(observations, mask, returns)
    assert values.isfinite().all()
    torch.testing.assert_close(values, returns, atol=1e-3, rtol=0)


def test_a_failed_solve_raises_that_tasks_regulariser_tenfold(monkeypatch):
    """rllab's escalation. In float64 the regularised equations of finite features factor, so
    the failure is simulated: task 0's first factorisation reports failure."""
    observations, mask, returns = baseline_data()
    cholesky_ex = torch.linalg.cholesky_ex
    calls = []

    def failing_first(matrix):
        factor, info = cholesky_ex(matrix)
        calls.append(matrix)
        if len(calls) == 1:
            info = info.clone()
            info[0] = 1
        return factor, info
    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing_first)
    values = LinearFeatureBaseline.fit_values(observations, mask, returns)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1][0] - calls[0][0], 9e-5 * np.eye(8), atol=1e-12)
    np.testing.assert_allclose(calls[1][1] - calls[0][1], np.zeros((8, 8)), atol=1e-12)
    arrays = observations.numpy(), mask.numpy(), returns.numpy()
    np.testing.assert_allclose(values[0].numpy(), rllab_fit(*arrays, 1e-4)[0], rtol=1e-7,
                               atol=1e-9)
    np.testing.assert_allclose(values[1].numpy(), rllab_fit(*arrays)[1], rtol=1e-7, atol=1e-9)


# Conjugate gradient, Fisher-vector products, TRPO ------------------------------------------------

def spd_matrix(size: int, seed: int) -> torch.Tensor:
    a = random(size, size, seed=seed)
    return a @ a.T + 0.5 * torch.eye(size, dtype=DOUBLE)


def test_conjugate_gradient_solves_a_symmetric_positive_definite_system():
    matrix, b = spd_matrix(6, seed=8), random(6, seed=9)
    x = conjugate_gradient(lambda v: matrix @ v, b, iterations=10)
    torch.testing.assert_close(x, torch.linalg.solve(matrix, b))
    assert conjugate_gradient(lambda v: matrix @ v, torch.zeros(6, dtype=DOUBLE)).eq(0).all()
    few = conjugate_gradient(lambda v: matrix @ v, b, iterations=2)  # stops where it is told
    assert not torch.allclose(few, torch.linalg.solve(matrix, b), atol=1e-3)


def detached(distribution):
    """A Gaussian policy's distribution as a constant: the old policy of a KL."""
    base = distribution.base_dist
    return type(distribution)(type(base)(base.loc.detach(), base.scale.detach()), 1)


def tiny_policy(seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    return GaussianMLPPolicy(2, 1, hidden_sizes=(2,)).double()  # 10 parameters


def as_function(policy, names_shapes, observations):
    """The policy's distribution as a function of one flat parameter vector."""
    def distribution(vector):
        params, offset = {}, 0
        for name, shape in names_shapes:
            size = math.prod(shape)
            params[name] = vector[offset:offset + size].reshape(shape)
            offset += size
        return functional_call(policy, params, (observations,))
    return distribution


def test_the_fisher_vector_product_is_the_damped_hessian_of_the_kl_times_v():
    policy = tiny_policy()
    observations = random(7, 2, seed=10)
    parameters = list(policy.parameters())
    names_shapes = [(name, p.shape) for name, p in policy.named_parameters()]
    distribution = as_function(policy, names_shapes, observations)
    start = flat(parameters).detach()
    with torch.no_grad():
        old = policy(observations)

    def mean_kl(vector):
        return kl_divergence(old, distribution(vector)).mean()
    explicit = hessian(mean_kl, start)
    product = fisher_vector_product(kl_divergence(old, policy(observations)).mean(), parameters,
                                    damping=1e-3)
    for seed in (11, 12):
        v = random(start.numel(), seed=seed)
        torch.testing.assert_close(product(v), explicit @ v + 1e-3 * v)


def test_the_fisher_vector_product_goes_through_an_inner_gradient_step():
    """As in MAML's outer step: the KL of the policy adapted by one gradient step, its Hessian
    taken through that step (second order)."""
    policy = tiny_policy(1)
    observations, actions = random(7, 2, seed=13), random(7, 1, seed=14)
    names_shapes = [(name, p.shape) for name, p in policy.named_parameters()]
    distribution = as_function(policy, names_shapes, observations)

    def adapted(vector):
        inner = -distribution(vector).log_prob(actions).mean()
        gradient, = torch.autograd.grad(inner, vector, create_graph=True)
        return distribution(vector - 0.5 * gradient)
    vector = flat(list(policy.parameters())).detach().requires_grad_()
    old = detached(adapted(vector))

    def kl(v):
        return kl_divergence(old, adapted(v)).mean()
    explicit = hessian(kl, vector.detach())
    product = fisher_vector_product(kl(vector), [vector], damping=0.0)
    v = random(vector.numel(), seed=15)
    torch.testing.assert_close(product(v), explicit @ v)


class LinearGaussian:
    """A Gaussian policy with a linear mean and a fixed unit std: its KL to the old policy is
    exactly quadratic in the parameters, so the step's KL equals its quadratic model."""

    def __init__(self):
        self.observations = random(20, 3, seed=16)
        self.actions = random(20, 2, seed=17)
        self.advantages = random(20, seed=18)
        self.weight = random(2, 3, seed=19).requires_grad_()
        self.old = self.distribution().log_prob(self.actions).detach()
        self.old_mean = (self.observations @ self.weight.T).detach()

    def distribution(self):
        mean = self.observations @ self.weight.T
        return torch.distributions.Independent(torch.distributions.Normal(mean, 1.0), 1)

    def surrogate(self):
        ratio = (self.distribution().log_prob(self.actions) - self.old).exp()
        return -(ratio * self.advantages).mean()

    def kl(self):
        old = torch.distributions.Independent(torch.distributions.Normal(self.old_mean, 1.0), 1)
        return kl_divergence(old, self.distribution()).mean()


def explicit_natural_step(surrogate, kl, vector, max_kl, damping=1e-5):
    """rllab's step by explicit matrices: d = (H + damping I)^-1 g, scaled to the KL bound."""
    gradient = torch.autograd.functional.jacobian(surrogate, vector)
    fisher = hessian(kl, vector) + damping * torch.eye(vector.numel(), dtype=DOUBLE)
    direction = torch.linalg.solve(fisher, gradient)
    return (2 * max_kl / (direction @ fisher @ direction + 1e-8)).sqrt() * direction, fisher


def test_the_full_step_is_the_natural_gradient_scaled_to_the_kl_bound():
    problem = LinearGaussian()
    start = problem.weight.detach().clone()

    def at(function):
        def evaluate(vector):
            saved = problem.weight
            problem.weight = vector.reshape(2, 3)
            try:
                return function()
            finally:
                problem.weight = saved
        return evaluate
    expected_step, fisher = explicit_natural_step(at(problem.surrogate), at(problem.kl),
                                                  start.flatten(), 0.01)
    assert torch.isclose(0.5 * expected_step @ fisher @ expected_step,
                         torch.tensor(0.01, dtype=DOUBLE), rtol=1e-5)
    result = trpo_step([problem.weight], problem.surrogate, problem.kl, max_kl=0.01)
    assert result["accepted"] == 1.0 and result["backtracks"] == 0.0
    step = (start - problem.weight.detach()).flatten()
    torch.testing.assert_close(step, expected_step)
    # the KL is quadratic here: the accepted step's KL is the bound (less the damping's share)
    assert 0.0099 < result["kl"] <= 0.01
    assert math.isclose(result["kl"], problem.kl().item())
    assert result["surrogate_after"] < result["surrogate_before"]


def test_the_step_on_an_mlp_policy_is_the_inverse_fisher_times_the_gradient():
    """A tanh MLP with a learned std (10 parameters): F from an explicit Hessian of the KL. F's
    smallest eigenvalues are near 1e-9, so conjugate gradient is given 20 iterations and stops at
    rllab's residual tolerance, which leaves about 3e-4 of the direction off."""
    policy = tiny_policy(2)
    observations, actions, advantages = random(9, 2, seed=20), random(9, 1, seed=21), random(9)
    parameters = list(policy.parameters())
    names_shapes = [(name, p.shape) for name, p in policy.named_parameters()]
    distribution = as_function(policy, names_shapes, observations)
    start = flat(parameters).detach().clone()
    with torch.no_grad():
        old = policy(observations)
        old_log_probs = old.log_prob(actions)

    def surrogate_of(vector):
        ratio = (distribution(vector).log_prob(actions) - old_log_probs).exp()
        return -(ratio * advantages).mean()

    def kl_of(vector):
        return kl_divergence(old, distribution(vector)).mean()
    expected_step, _ = explicit_natural_step(surrogate_of, kl_of, start, 0.01)
    result = trpo_step(parameters, lambda: surrogate_of(flat(parameters)),
                       lambda: kl_of(flat(parameters)), max_kl=0.01, cg_iterations=20)
    assert result["accepted"] == 1.0
    step = (start - flat(parameters).detach()) / 0.5 ** result["backtracks"]
    assert (step - expected_step).norm() < 1e-3 * expected_step.norm()
    assert result["kl"] <= 0.01


class LogStd:
    """One parameter, the log std s of a Gaussian whose old std is 1: KL(old || new) =
    s + exp(-2s) / 2 - 1/2, more than its quadratic model s^2 when s < 0."""

    def __init__(self):
        self.s = torch.zeros(1, dtype=DOUBLE, requires_grad=True)

    def kl(self):
        return (self.s + (-2 * self.s).exp() / 2 - 0.5).sum()


def test_the_line_search_halves_a_step_that_breaks_the_kl_bound():
    problem = LogStd()
    full = math.sqrt(0.02 / (2 + 1e-5))  # the natural step: sqrt(2 max_kl / F), F = 2 + damping
    assert -full + math.exp(2 * full) / 2 - 0.5 > 0.01  # the full step's true KL is too much
    result = trpo_step([problem.s], lambda: problem.s.sum(), problem.kl, max_kl=0.01)
    assert result["accepted"] == 1.0 and result["backtracks"] == 1.0
    assert math.isclose(problem.s.item(), -full / 2, rel_tol=1e-6)
    assert result["kl"] <= 0.01 and math.isclose(result["kl"], problem.kl().item())


def test_the_line_search_halves_a_step_that_worsens_the_surrogate():
    """A surrogate whose minimum is close: the KL-sized full step and its half overshoot so far
    that the loss rises; a quarter of it lowers the loss."""
    problem = LogStd()
    full = math.sqrt(0.02 / (2 + 1e-5))
    target = -0.2 * full  # a quarter step lands near it; half and the full one overshoot

    def surrogate():
        return ((problem.s - target) ** 2).sum()
    result = trpo_step([problem.s], surrogate, problem.kl, max_kl=0.01)
    assert result["accepted"] == 1.0 and result["backtracks"] == 2.0
    assert math.isclose(problem.s.item(), -full / 4, rel_tol=1e-4)
    assert result["surrogate_after"] < result["surrogate_before"]


def test_the_parameters_are_restored_when_no_step_is_accepted():
    """A minimum 1e-3 away: the steps of about 0.1, 0.05 and 0.025 all overshoot it; with more
    halvings, the seventh step (0.1 / 64) lands short of it and is kept."""
    problem = LogStd()

    def surrogate():
        return ((problem.s + 1e-3) ** 2).sum()
    result = trpo_step([problem.s], surrogate, problem.kl, max_kl=0.01, max_backtracks=3)
    assert result["accepted"] == 0.0 and result["backtracks"] == 3.0
    assert problem.s.item() == 0.0
    assert result["surrogate_after"] == result["surrogate_before"] and result["kl"] == 0.0
    result = trpo_step([problem.s], surrogate, problem.kl, max_kl=0.01)
    assert result["accepted"] == 1.0 and result["backtracks"] == 6.0
    assert -2e-3 < problem.s.item() < 0


def test_the_closures_may_take_gradients_inside_during_the_line_search():
    """MAML's outer step: surrogate and KL of a policy adapted by an inner gradient step,
    computed anew at every parameter value the line search tries."""
    policy = tiny_policy(3)
    observations, actions, advantages = random(9, 2, seed=22), random(9, 1, seed=23), random(9)
    parameters = list(policy.parameters())
    names = [name for name, _ in policy.named_parameters()]

    def adapted():
        inner = -policy(observations).log_prob(actions).mean()
        gradients = torch.autograd.grad(inner, parameters, create_graph=True)
        return functional_call(policy, {name: p - 0.1 * g for name, p, g
                                        in zip(names, parameters, gradients)}, (observations,))
    old = detached(adapted())
    old_log_probs = old.log_prob(actions)

    def surrogate():
        return -((adapted().log_prob(actions) - old_log_probs).exp() * advantages).mean()

    def kl():
        return kl_divergence(old, adapted()).mean()
    before = flat(parameters).detach().clone()
    result = trpo_step(parameters, surrogate, kl, max_kl=0.01)
    assert result["accepted"] == 1.0 and not torch.equal(flat(parameters).detach(), before)
    assert result["kl"] <= 0.01 and result["surrogate_after"] < result["surrogate_before"]
