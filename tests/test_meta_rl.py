"""The meta-RL algorithms (metalearn/algorithms/meta_rl.py, maml_rl.py, promp.py,
pretrained_rl.py, random_rl.py) against independent references: finite differences of the
post-adaptation objective, a task-by-task adaptation on the plain policy, rollouts made by hand,
closed forms of ProMP's objectives, TRPO's KL bound recomputed after a meta-update, and a
resumed Lightning run against a straight one."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from torch.distributions import kl_divergence
from torch.func import functional_call

from metalearn.algorithms.maml_rl import MAMLRL
from metalearn.algorithms.meta_rl import Samples, detached, rollout_seed
from metalearn.algorithms.pretrained_rl import PretrainedPolicy
from metalearn.algorithms.promp import (
    ProMP,
    adapted_kl_coefficients,
    clipped_loss,
    lvc_loss,
)
from metalearn.algorithms.random_rl import RandomPolicy
from metalearn.data.env_family import EnvFamily
from metalearn.data.rl_datamodule import EnvDataModule, RLBatch
from metalearn.data.rollouts import Trajectories
from metalearn.errors import NonFiniteError, UserError
from metalearn.models.policies import GaussianMLPPolicy, build_policy

INNER_LR = 0.5


def tiny_module(cls=MAMLRL, **options):
    """A float64 module on a Gaussian policy with one hidden layer of 4, 2-d observations and
    actions; its env family is never used."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=[4], init_std=0.8)
    return cls(policy, None, inner_lr=INNER_LR, episodes_per_task=3, **options).double()


def fixed_trajectories(seed: int) -> Trajectories:
    """2 tasks x 3 episodes x 5 steps made by hand, two episodes ending early."""
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 3, 5)
    mask = torch.ones(shape, dtype=torch.float64)
    mask[0, 1, 3:] = 0
    mask[1, 2, 2:] = 0
    observations = torch.randn(*shape, 2, generator=generator, dtype=torch.float64)
    actions = torch.randn(*shape, 2, generator=generator, dtype=torch.float64)
    rewards = torch.randn(*shape, generator=generator, dtype=torch.float64) * mask
    return Trajectories(observations, actions, rewards, mask)


def fixed_samples(module: MAMLRL) -> Samples:
    """Pre- and post-adaptation trajectories made by hand, with the weights that would have
    sampled them: the current ones, then those adapted on the first trajectories."""
    pre, post = fixed_trajectories(1), fixed_trajectories(2)
    start = module.task_params(2, differentiable=False)
    adapted = detached(module.adapt(start, pre, create_graph=False))
    return Samples([pre, post], [start, adapted],
                   [module.log_probs(start, pre), module.log_probs(adapted, post)],
                   [module.advantages(pre), module.advantages(post)])


def central_differences(function, parameters: list[torch.Tensor], step: float = 1e-6):
    """d function / d parameters, by central finite differences, one entry at a time."""
    gradients = []
    with torch.no_grad():
        for parameter in parameters:
            gradient = torch.zeros_like(parameter)
            flat, flat_gradient = parameter.view(-1), gradient.view(-1)
            for index in range(flat.numel()):
                kept = flat[index].item()
                flat[index] = kept + step
                above = function().item()
                flat[index] = kept - step
                below = function().item()
                flat[index] = kept
                flat_gradient[index] = (above - below) / (2 * step)
            gradients.append(gradient)
    return gradients


def relative_error(found: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    found, expected = torch.cat([t.flatten() for t in found]), torch.cat(
        [t.flatten() for t in expected])
    return ((found - expected).norm() / expected.norm()).item()


# The inner adaptation's meta-gradient --------------------------------------------------------
def test_second_order_meta_gradient_matches_finite_differences():
    module = tiny_module()
    samples = fixed_samples(module)
    parameters = list(module.policy.parameters())
    gradient = torch.autograd.grad(module.surrogate(samples), parameters)
    expected = central_differences(lambda: module.surrogate(samples), parameters)
    assert relative_error(gradient, expected) < 1e-6


def test_first_order_gradient_is_the_gradient_at_the_adapted_weights():
    first, second = tiny_module(first_order=True), tiny_module()
    samples = fixed_samples(first)
    parameters = list(first.policy.parameters())
    first_order = torch.autograd.grad(first.surrogate(samples), parameters)

    # the post-adaptation surrogate as a function of the adapted weights alone, summed over tasks
    adapted = {name: value.detach().requires_grad_()
               for name, value in first.adapted(samples).items()}
    post = samples.trajectories[-1]
    ratio = torch.exp(first.log_probs(adapted, post) - samples.log_probs[-1])
    per_step = ratio * samples.advantages[-1] * post.mask
    loss = -(per_step.sum((1, 2)) / post.mask.sum((1, 2))).mean()
    at_adapted = torch.autograd.grad(loss, list(adapted.values()))
    assert relative_error(first_order, [g.sum(0) for g in at_adapted]) < 1e-12

    second_order = torch.autograd.grad(second.surrogate(samples),
                                       list(second.policy.parameters()))
    assert relative_error(first_order, second_order) > 1e-3


def test_surrogate_starts_at_zero_and_kl_at_zero():
    """At the weights that sampled the post-adaptation trajectories the importance ratio is 1
    (the surrogate is minus the mean normalised advantage, 0) and the KL is 0."""
    module = tiny_module()
    samples = fixed_samples(module)
    assert abs(module.surrogate(samples).item()) < 1e-12
    assert abs(module.kl_after_adaptation(samples).item()) < 1e-12


# Batched adaptation ------------------------------------------------------------------------
def test_batched_adaptation_equals_each_task_adapted_alone_on_the_plain_policy():
    module = tiny_module()
    trajectories = fixed_trajectories(3)
    advantages = module.advantages(trajectories)
    batched = module.adapt(module.task_params(2, differentiable=False), trajectories,
                           create_graph=False)
    for task in range(2):
        alone = trajectories.select(slice(task, task + 1))
        assert torch.allclose(module.advantages(alone)[0], advantages[task], atol=1e-12)
        # the policy gradient of the task by hand: the plain module, no vmap, no per-task copies
        own = trajectories.select(task)
        log_probs = module.policy(own.observations).log_prob(own.actions)
        loss = -(log_probs * advantages[task] * own.mask).sum() / own.mask.sum()
        gradients = torch.autograd.grad(loss, list(module.policy.parameters()))
        for (name, weight), gradient in zip(module.policy.named_parameters(), gradients):
            assert torch.allclose(batched[name][task], weight - INNER_LR * gradient,
                                  atol=1e-12), name


# Evaluation ----------------------------------------------------------------------------------
@pytest.fixture
def navigation():
    envs = EnvFamily("navigation2d", horizon=10)
    return envs, envs.held_out_tasks("val", 2, seed=0)


def small_module(envs, cls=MAMLRL, **options):
    torch.manual_seed(0)
    policy = build_policy(envs.observation_space, envs.action_space, hidden_sizes=[8])
    return cls(policy, envs, **{"episodes_per_task": 2, **options})


def test_return_by_steps_is_reproducible_and_starts_from_the_unadapted_policy(navigation):
    envs, tasks = navigation
    module = small_module(envs)
    weights = copy.deepcopy(module.state_dict())
    returns = module.return_by_steps(tasks, seed=11, steps=2)
    assert returns.shape == (2, 3)
    assert torch.equal(returns, module.return_by_steps(tasks, seed=11, steps=2))
    assert not torch.equal(returns, module.return_by_steps(tasks, seed=12, steps=2))
    # column 0: the plain policy rolled out by hand with the step's seed
    by_hand = envs.rollout(lambda observations: module.policy(observations), tasks, 2,
                           rollout_seed(11, 0)).returns().mean(1)
    assert torch.allclose(returns[:, 0], by_hand, atol=1e-5)
    # adaptation happened, and left the module's weights as they were
    assert not torch.equal(returns[:, 1], returns[:, 0])
    assert all(torch.equal(value, weights[name]) for name, value in module.state_dict().items())


# ProMP's objectives --------------------------------------------------------------------------
def test_lvc_objective_is_the_policy_gradient_objective_at_the_sampling_policy():
    generator = torch.Generator().manual_seed(4)
    advantages = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    mask = fixed_trajectories(0).mask
    old = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    counts = mask.sum((1, 2))

    log_probs = old.clone().requires_grad_()
    loss = lvc_loss(log_probs, old, advantages, mask)
    # at the sampling policy: minus the mean advantage, and the gradient of -mean(log pi * A)
    assert torch.allclose(loss, -(advantages * mask).sum((1, 2)) / counts)
    gradient, = torch.autograd.grad(loss.sum(), log_probs)
    assert torch.allclose(gradient, -advantages * mask / counts[:, None, None])

    # elsewhere: the importance-weighted gradient, -pi / pi_old * A
    moved = (old + 0.3 * torch.randn(2, 3, 5, generator=generator,
                                     dtype=torch.float64)).requires_grad_()
    gradient, = torch.autograd.grad(lvc_loss(moved, old, advantages, mask).sum(), moved)
    ratio = torch.exp(moved.detach() - old)
    assert torch.allclose(gradient, -ratio * advantages * mask / counts[:, None, None])


def test_lvc_gradient_on_a_policy_equals_the_plain_policy_gradient():
    module = tiny_module(ProMP)
    trajectories = fixed_trajectories(5)
    advantages = module.advantages(trajectories)
    parameters = list(module.policy.parameters())
    params = module.task_params(2)
    log_probs = module.log_probs(params, trajectories)
    lvc = torch.autograd.grad(
        lvc_loss(log_probs, log_probs.detach(), advantages, trajectories.mask).sum(), parameters)
    log_probs = module.policy(trajectories.observations).log_prob(trajectories.actions)
    per_task = (log_probs * advantages * trajectories.mask).sum((1, 2))
    plain = torch.autograd.grad(-(per_task / trajectories.mask.sum((1, 2))).sum(), parameters)
    assert relative_error(lvc, plain) < 1e-12


def test_clipped_objective_against_a_hand_computation():
    log_probs = torch.tensor([[[0.5, -0.1, 0.0, 2.0]], [[-0.6, 0.2, 0.1, -3.0]]],
                             dtype=torch.float64)
    old = torch.zeros_like(log_probs)
    advantages = torch.tensor([[[1.0, -2.0, 0.5, 3.0]], [[1.5, 2.0, -1.0, 4.0]]],
                              dtype=torch.float64)
    mask = torch.tensor([[[1.0, 1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0, 0.0]]], dtype=torch.float64)
    clip = 0.3
    expected = []
    for task in range(2):
        terms = []
        for step in range(4):
            if mask[task, 0, step]:
                ratio = math.exp(log_probs[task, 0, step] - old[task, 0, step])
                advantage = advantages[task, 0, step].item()
                terms.append(min(ratio * advantage,
                                 min(max(ratio, 1 - clip), 1 + clip) * advantage))
        expected.append(-sum(terms) / len(terms))
    found = clipped_loss(log_probs, old, advantages, mask, clip)
    assert torch.allclose(found, torch.tensor(expected, dtype=torch.float64))


def test_kl_coefficients_follow_the_reference_rule():
    coefficients = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    kls = torch.tensor([0.001, 0.01, 0.1, 0.0066], dtype=torch.float64)
    found = adapted_kl_coefficients(coefficients, kls, target=0.01)
    assert found.tolist() == [0.5, 1.0, 2.0, 0.5]


# One meta-update on 2D navigation -----------------------------------------------------------
def adapted_kl_by_hand(policy, old: dict, new: dict, trajectories: Trajectories) -> float:
    """Mean over tasks of the mean KL(old || new) over each task's steps, task by task."""
    kls = []
    for task in range(trajectories.mask.shape[0]):
        observations, mask = trajectories.observations[task], trajectories.mask[task]
        before = functional_call(policy, {k: v[task] for k, v in old.items()}, (observations,))
        after = functional_call(policy, {k: v[task] for k, v in new.items()}, (observations,))
        kls.append((kl_divergence(before, after) * mask).sum() / mask.sum())
    return torch.stack(kls).mean().item()


@pytest.mark.parametrize("env, cls, options", [
    ("navigation2d", MAMLRL, {}), ("navigation2d", MAMLRL, {"first_order": True}),
    ("navigation2d", PretrainedPolicy, {}),
    ("cartpole_varied", MAMLRL, {}),  # discrete actions: a categorical policy
])
def test_trpo_meta_update_keeps_the_kl_of_the_adapted_policies_within_max_kl(env, cls, options):
    envs = EnvFamily(env, horizon=10)
    tasks = envs.held_out_tasks("val", 2, seed=0)
    module = small_module(envs, cls, max_kl=0.01, **options)
    before = copy.deepcopy(module)
    stats = module.meta_update(tasks, seed=3)
    assert stats["accepted"] == 1.0
    # the same rollouts again (same seed), from the weights before the update
    samples = before.samples(tasks, seed=3)
    kl = adapted_kl_by_hand(module.policy, samples.sampled_with[-1],
                            detached(module.adapted(samples)), samples.trajectories[-1])
    assert 0 < kl <= 0.01 * (1 + 1e-5)
    assert kl == pytest.approx(stats["kl"], rel=1e-4)
    assert stats["surrogate_after"] < stats["surrogate_before"]


def test_promp_meta_update_steps_adam_and_adapts_its_kl_coefficients(navigation):
    envs, tasks = navigation
    module = small_module(envs, ProMP, adaptive_inner_kl_penalty=True,
                               init_inner_kl_penalty=0.1, target_inner_kl=1.0)
    weights = copy.deepcopy(module.policy.state_dict())
    stats = module.meta_update(tasks, seed=3)
    assert stats["loss_after"] < stats["loss_before"]
    assert not torch.equal(weights["log_std"], module.policy.log_std)
    assert module.outer_optimizer.state_dict()["state"][0]["step"] == 5  # ppo_epochs
    # an inner KL far below the target halves the coefficient, which the state dict carries
    assert stats["inner_kl"] < 1.0 / 1.5
    assert module.state_dict()["inner_kl_coefficients"].tolist() == [0.05]


def test_random_policy_never_rolls_out_in_training(navigation):
    envs, tasks = navigation
    module = small_module(envs, RandomPolicy)
    envs.rollout = None  # any rollout would fail
    assert module.meta_update(tasks, seed=3) == {}


@pytest.mark.parametrize("options, key", [({"episodes_per_task": 0}, "episodes_per_task"),
                                          ({"inner_lr": 0.0}, "inner_lr"),
                                          ({"max_kl": -1.0}, "max_kl"),
                                          ({"gamma": 1.5}, "gamma")])
def test_bad_settings_are_refused_in_one_line(navigation, options, key):
    envs, _ = navigation
    with pytest.raises(UserError, match=f"algorithm.{key}=") as error:
        small_module(envs, MAMLRL, **options)
    assert "\n" not in str(error.value)


# Within a Lightning run -----------------------------------------------------------------------
def fit(module, datamodule, max_steps: int, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, inference_mode=False)
    trainer.fit(module, datamodule, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("cls, options", [(MAMLRL, {}),
                                          (ProMP, {"adaptive_inner_kl_penalty": True,
                                                   "target_inner_kl": 1.0})])
def test_a_resumed_run_continues_exactly(navigation, tmp_path, cls, options):
    """Two meta-updates straight, or one, a checkpoint and a resumed second: the same weights,
    the same optimiser state and KL coefficients; Lightning counts one step per meta-update;
    the meta-test gives each held-out task's returns by steps."""
    envs, _ = navigation

    def run(max_steps: int, ckpt_path=None):
        module = small_module(envs, cls, test_inner_steps=1, **options)
        data = EnvDataModule(envs, meta_batch_size=2, num_tasks=4, val_tasks=2, test_tasks=3)
        return module, data, fit(module, data, max_steps, ckpt_path)

    straight, _, trainer = run(2)
    assert trainer.global_step == 2
    _, _, first = run(1)
    first.save_checkpoint(tmp_path / "one.ckpt")
    resumed, data, trainer = run(2, tmp_path / "one.ckpt")
    assert trainer.global_step == 2
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    if cls is ProMP:
        assert straight.inner_kl_coefficients.item() == 5e-4 / 4
        adam, adam_resumed = (module.outer_optimizer.state_dict()["state"]
                              for module in (straight, resumed))
        assert adam[0]["step"] == 10
        for index, state in adam.items():
            assert all(torch.equal(state[key], adam_resumed[index][key]) for key in state)

    trainer.test(resumed, data, verbose=False)
    returns = torch.cat(resumed.test_returns)
    assert returns.shape == (3, 2)
    assert torch.equal(returns, resumed.return_by_steps(*data.held_out("test"), 1))


def test_a_meta_update_gone_non_finite_stops_the_run(navigation, monkeypatch):
    envs, tasks = navigation
    module = small_module(envs, RandomPolicy)
    monkeypatch.setattr(module, "meta_update",
                        lambda tasks, seed: {"return_before": -3.0, "loss_after": math.nan})
    with pytest.raises(NonFiniteError, match="loss_after became nan at step 0"):
        module.training_step(RLBatch(tasks, 3), 0)
