"""The meta-RL environments and their rollouts (metalearn/data/meta_envs.py, rollouts.py,
env_family.py): seeded rollouts bit for bit, fixed held-out tasks, rewards and episode ends
against hand computations and plain gymnasium envs stepped by hand, a user's environment by
name, the oracle's input, physics that change with the task, and the one-line refusals."""

from __future__ import annotations

import math
import pickle
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control import CartPoleEnv, PendulumEnv

from metalearn.data.env_family import EnvFamily
from metalearn.data.meta_envs import HalfCheetahDir, HalfCheetahVel
from metalearn.data.rollouts import Trajectories, reset_seed
from tests.helpers import user_error


class TinyEnv(gym.Env):
    """A user's environment: a point on a line moved towards a goal, as the protocol asks."""

    horizon = 6

    def __init__(self, step_size: float = 0.5):
        self.step_size = step_size
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.goal = self.position = 0.0

    def sample_tasks(self, n, rng):
        return [{"goal": float(goal)} for goal in rng.uniform(-1.0, 1.0, n)]

    def set_task(self, task):
        self.goal = task["goal"]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = 0.0
        return np.array([self.position], np.float32), {}

    def step(self, action):
        self.position += self.step_size * float(action[0])
        return np.array([self.position], np.float32), -abs(self.position - self.goal), False, \
            False, {}


class NoSetTask(gym.Env):
    def sample_tasks(self, n, rng):
        return [None] * n


class UnseededTasks(TinyEnv):
    """learn2learn's protocol: tasks drawn from the env's own random state."""

    def sample_tasks(self, n):
        return super().sample_tasks(n, self.np_random)


class Scripted:
    """What a policy returns, with a sample() that gives fixed actions."""

    def __init__(self, actions: torch.Tensor):
        self.actions = actions

    def sample(self) -> torch.Tensor:
        return self.actions


def random_policy(space):
    """obs [B, E, d] -> a fixed random distribution over `space`'s actions."""
    def policy(observations):
        batch = observations.shape[:-1]
        if isinstance(space, gym.spaces.Discrete):
            return torch.distributions.Categorical(logits=torch.zeros(*batch, space.n))
        scale = torch.as_tensor(space.high, dtype=torch.float32).expand(*batch, *space.shape)
        return torch.distributions.Independent(torch.distributions.Normal(0 * scale, scale), 1)
    return policy


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same(first: Trajectories, second: Trajectories) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("name", ["navigation2d", "cartpole_varied", "pendulum_varied"])
def test_the_same_seed_gives_the_same_trajectories_bit_for_bit(name):
    family = EnvFamily(name, horizon=30)
    policy = random_policy(family.action_space)
    tasks = family.sample_tasks(3, generator(0))
    first = family.rollout(policy, tasks, 4, seed=11)
    family.rollout(policy, family.sample_tasks(5, generator(1)), 4, seed=12)  # the pool moves on
    again = family.rollout(policy, tasks, 4, seed=11)
    other = family.rollout(policy, tasks, 4, seed=12)
    unpickled = pickle.loads(pickle.dumps(family))  # rebuilds its pool
    assert len(unpickled.pool) == 1
    assert same(first, again) and same(first, unpickled.rollout(policy, tasks, 4, seed=11))
    assert not torch.equal(first.observations, other.observations)
    assert first.observations.shape[:3] == (3, 4, 30) and first.mask.dtype == torch.float32


def test_held_out_tasks_depend_on_the_seed_and_split_alone():
    family = EnvFamily("navigation2d")
    test = family.held_out_tasks("test", 5, seed=3)
    family.sample_tasks(7, generator(0))
    family.held_out_tasks("val", 2, seed=3)
    again = family.held_out_tasks("test", 5, seed=3)
    assert [task["goal"].tolist() for task in test] == [task["goal"].tolist() for task in again]
    val = family.held_out_tasks("val", 5, seed=3)
    assert val[0]["goal"].tolist() != test[0]["goal"].tolist()
    assert family.held_out_tasks("test", 5, seed=4)[0]["goal"].tolist() != test[0]["goal"].tolist()
    assert all(-0.5 <= value <= 0.5 for task in test for value in task["goal"])
    assert family.describe(test[0]) == {"goal": test[0]["goal"].tolist()}


def test_navigation_rewards_minus_the_distance_and_ends_within_a_hundredth_of_the_goal():
    family = EnvFamily("navigation2d")
    goals = [np.array([0.33, -0.21]), np.array([-0.4, 0.05])]
    tasks = [{"goal": goal} for goal in goals]
    goal_tensor = torch.tensor(np.stack(goals), dtype=torch.float32)[:, None]

    def towards_goal(observations):  # 70% of the way, at most 0.1 a coordinate (later clipped)
        return Scripted(0.7 * (goal_tensor - observations) + 0.001)

    trajectories = family.rollout(towards_goal, tasks, 2, seed=0)
    assert trajectories.observations.shape == (2, 2, 100, 2)
    for task, goal in enumerate(goals):
        for episode in range(2):
            actions = trajectories.actions[task, episode].double().numpy()
            position, ended = np.zeros(2), None
            for step in range(100):
                assert trajectories.observations[task, episode, step].tolist() == pytest.approx(
                    position.tolist(), abs=1e-6)
                if ended is not None:
                    assert trajectories.mask[task, episode, step] == 0
                    assert trajectories.rewards[task, episode, step] == 0
                    continue
                position = position + np.clip(actions[step], -0.1, 0.1)
                distance = math.dist(position, goal)
                assert trajectories.mask[task, episode, step] == 1
                assert trajectories.rewards[task, episode, step].item() == pytest.approx(
                    -distance, abs=1e-6)
                if np.abs(position - goal).max() < 0.01:
                    ended = step
            assert ended is not None and 3 < ended < 20


def test_the_horizon_bounds_every_episode():
    family = EnvFamily("navigation2d", horizon=7)
    trajectories = family.rollout(random_policy(family.action_space),
                                  family.sample_tasks(2, generator(0)), 3, seed=0)
    assert trajectories.rewards.shape == (2, 3, 7) and trajectories.mask.sum() == 2 * 3 * 7
    assert trajectories.select([1]).actions.shape == (1, 3, 7, 2)


def plain_cartpole(task: dict) -> CartPoleEnv:
    env = CartPoleEnv()
    env.length, env.masspole = task["length"], task["pole_mass"]
    env.masscart, env.gravity = task["cart_mass"], task["gravity"]
    env.total_mass, env.polemass_length = env.masspole + env.masscart, env.masspole * env.length
    return env


def test_masks_and_returns_match_a_plain_gymnasium_env_stepped_by_hand():
    family = EnvFamily("cartpole_varied", horizon=40)
    tasks = family.sample_tasks(3, generator(2))
    trajectories = family.rollout(random_policy(family.action_space), tasks, 4, seed=9)
    lengths = []
    for task in range(3):
        for episode in range(4):
            env = plain_cartpole(tasks[task])
            observation, _ = env.reset(seed=reset_seed(9, task * 4 + episode))
            total, steps = 0.0, 0
            for action in trajectories.actions[task, episode].tolist():
                assert trajectories.observations[task, episode, steps].tolist() == \
                    observation.tolist()
                observation, reward, terminated, truncated, _ = env.step(action)
                total, steps = total + reward, steps + 1
                if terminated or truncated:
                    break
            lengths.append(steps)
            assert trajectories.mask[task, episode].tolist() == [1.0] * steps + [0.0] * (40 - steps)
            # after the end: the last observation, a zero action and a zero reward
            assert trajectories.observations[task, episode, steps:].tolist() == \
                [observation.tolist()] * (40 - steps)
            assert not trajectories.actions[task, episode, steps:].any()
            assert not trajectories.rewards[task, episode, steps:].any()
            assert trajectories.returns()[task, episode].item() == total
    assert min(lengths) < 40  # some episodes ended before the horizon
    assert trajectories.actions.dtype == torch.int64


@pytest.mark.parametrize("name", ["tests.test_meta_envs:TinyEnv", "tests.test_meta_envs.TinyEnv"])
def test_a_users_environment_is_named_by_its_module_and_class(name):
    family = EnvFamily(name, options={"step_size": 0.25})
    assert family.horizon == 6
    tasks = family.sample_tasks(2, generator(0))
    # 3 is clipped to the action space's 1 before the env's step; the stored action is 3
    trajectories = family.rollout(lambda observations: Scripted(torch.full((2, 3, 1), 3.0)),
                                  tasks, 3, seed=0)
    assert torch.equal(trajectories.actions, torch.full((2, 3, 6, 1), 3.0))
    positions = 0.25 * torch.arange(1, 7, dtype=torch.float32)
    goals = torch.tensor([task["goal"] for task in tasks])
    expected = -(positions - goals[:, None]).abs()
    assert torch.allclose(trajectories.rewards, expected[:, None].expand(2, 3, 6))
    assert family.describe(tasks[1]) == {"goal": tasks[1]["goal"]}


def test_the_oracle_sees_the_goal_appended_to_every_observation():
    family = EnvFamily("navigation2d", horizon=5, oracle=True)
    assert family.observation_space.shape == (4,)
    assert family.input_record()["observation_shape"] == [4]
    tasks = family.sample_tasks(2, generator(0))
    trajectories = family.rollout(random_policy(family.action_space), tasks, 3, seed=0)
    goals = torch.tensor(np.stack([task["goal"] for task in tasks]), dtype=torch.float32)
    assert torch.equal(trajectories.observations[..., 2:],
                       goals[:, None, None].expand(2, 3, 5, 2))
    plain = EnvFamily("navigation2d", horizon=5).rollout(
        random_policy(family.action_space), tasks, 3, seed=0)
    assert torch.equal(trajectories.observations[..., :2], plain.observations)


def plain_pendulum(task: dict) -> PendulumEnv:
    env = PendulumEnv(g=task["gravity"])
    env.m, env.l = task["mass"], task["length"]
    return env


@pytest.mark.parametrize("name, changed, action", [
    ("cartpole_varied", "length", 1), ("cartpole_varied", "gravity", 0),
    ("pendulum_varied", "mass", [1.0]), ("pendulum_varied", "length", [-1.0]),
])
def test_the_physics_change_with_the_task(name, changed, action):
    family = EnvFamily(name, horizon=8)
    task = family.sample_tasks(1, generator(0))[0]
    other = dict(task, **{changed: task[changed] * 1.5})
    actions = torch.tensor(action).expand(1, 1, *np.shape(action))
    first, again, changed_run = (family.rollout(lambda observations: Scripted(actions), [t], 1,
                                                seed=4) for t in (task, dict(task), other))
    assert same(first, again)
    assert torch.equal(first.observations[0, 0, 0], changed_run.observations[0, 0, 0])
    assert not torch.allclose(first.observations[0, 0, 1:6], changed_run.observations[0, 0, 1:6])
    reference = (plain_cartpole if name == "cartpole_varied" else plain_pendulum)(other)
    reference.reset(seed=reset_seed(4, 0))
    for step in range(1, 6):
        observation = reference.step(action)[0]
        assert changed_run.observations[0, 0, step].tolist() == observation.tolist()


def test_half_cheetah_rewards_follow_the_velocity_from_qpos_and_rllabs_control_cost():
    pytest.importorskip("mujoco")
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (5, 6)).astype(np.float32)
    for env, task, task_reward in [
        (HalfCheetahVel(), {"velocity": 1.3}, lambda v: -abs(v - 1.3)),
        (HalfCheetahDir(), {"direction": -1.0}, lambda v: -v),
    ]:
        env.set_task(task)
        env.reset(seed=0)
        simulator = env.unwrapped
        for action in actions:
            before = simulator.data.qpos[0]
            reward = env.step(action)[1]
            velocity = (simulator.data.qpos[0] - before) / simulator.dt
            assert reward == pytest.approx(task_reward(velocity) - 0.5 * 0.1 * np.sum(action**2))
            assert velocity != 0
    assert EnvFamily("half_cheetah_dir").horizon == 200
    family = EnvFamily("half_cheetah_vel", horizon=5)
    tasks = family.held_out_tasks("test", 2, seed=0)
    assert all(0.0 <= task["velocity"] <= 2.0 for task in tasks)
    policy = random_policy(family.action_space)
    first = family.rollout(policy, tasks, 2, seed=1)
    family.rollout(policy, family.sample_tasks(3, generator(0)), 2, seed=2)
    assert same(first, family.rollout(policy, tasks, 2, seed=1))
    assert first.observations.shape == (2, 2, 5, 17) and first.mask.sum() == 20


def test_the_paper_settings_are_each_familys_defaults():
    assert EnvFamily("navigation2d").horizon == 100
    assert EnvFamily("navigation2d").env.goal_range == (-0.5, 0.5)
    assert EnvFamily("cartpole_varied").action_space == gym.spaces.Discrete(2)
    assert EnvFamily("pendulum_varied").input_record() == {
        "observation_shape": [3], "action_space": "Box(-2.0, 2.0, (1,), float32)"}


@pytest.mark.parametrize("arguments, words", [
    ({"name": "nowhere"}, ["env.name='nowhere' is not a known environment", "navigation2d",
                           "cartpole_varied", "package.module:Class"]),
    ({"name": "no_such_package.envs:Env"}, ["cannot import no_such_package.envs"]),
    ({"name": "tests.test_meta_envs:Missing"}, ["has no class Missing"]),
    ({"name": "navigation2d", "options": {"goal_rangee": 1}},
     ["env.options.goal_rangee is not an option of navigation2d", "its options: goal_range"]),
    ({"name": "tests.test_meta_envs:TinyEnv", "options": {"size": 1}}, ["its options: step_size"]),
    ({"name": "navigation2d", "options": {"goal_range": [0.5, -0.5]}},
     ["env.options.goal_range=[0.5, -0.5] must be [low, high]"]),
    ({"name": "tests.test_meta_envs:NoSetTask"}, ["NoSetTask lacks set_task"]),
    ({"name": "gymnasium.envs.classic_control:CartPoleEnv"},
     ["CartPoleEnv lacks sample_tasks and set_task"]),
    ({"name": "tests.test_meta_envs:UnseededTasks"},
     ["UnseededTasks.sample_tasks must take (n, rng)"]),
    ({"name": "navigation2d", "horizon": 0}, ["env.horizon=0 must be a whole number >= 1"]),
    ({"name": "tests.test_meta_envs:TinyEnv", "oracle": True},
     ["env.oracle=true needs TinyEnv.task_observation(task)"]),
])
def test_bad_settings_are_refused_in_one_line(arguments, words):
    message = user_error(lambda: EnvFamily(**arguments))
    assert all(word in message for word in words), message


def test_a_batch_of_no_rollouts_is_refused_in_one_line():
    family = EnvFamily("navigation2d")
    message = user_error(lambda: family.rollout(random_policy(family.action_space),
                                                family.sample_tasks(1, generator(0)), 0, seed=0))
    assert "algorithm.episodes_per_task=0 must be a whole number >= 1" in message


@pytest.mark.parametrize("name", ["half_cheetah_vel", "half_cheetah_dir"])
def test_a_mujoco_family_without_mujoco_says_which_extra_to_install(name, monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)  # import mujoco now fails, as uninstalled
    message = user_error(lambda: EnvFamily(name))
    assert f"env.name={name} needs MuJoCo" in message
    assert "pip install 'metalearn[mujoco]'" in message
