"""The environments of meta-reinforcement learning and the task protocol they follow.

A meta-RL environment is a distribution of tasks (goals, velocities, physical constants) over one
`gymnasium.Env`, as in MAML's rllab envs and learn2learn's `MetaEnv`:

- `sample_tasks(n, rng)`: n tasks drawn with the numpy Generator `rng` alone; a task is any
  picklable value (ours are dicts of floats and small arrays);
- `set_task(task)`: the episodes that follow (after `reset`) are of that task;
- optionally `task_observation(task)`: the task as a float vector, which the oracle
  (`env.oracle=true`) sees appended to every observation;
- optionally `horizon`: steps per episode when the config gives none.

`TASK_PROTOCOL` names the two required methods. The families here (`ENVS`, the `env` config
group): the MAML paper's (Finn et al. 2017, section 5.3) point robot `Navigation2D` and
half-cheetah `HalfCheetahVel` / `HalfCheetahDir` with its rewards and task ranges, and two
classic-control families with varied physics, `CartPoleVaried` (discrete actions) and
`PendulumVaried` (continuous), cheap enough for the tests.

A user's environment is used by one override, `env=user env.name=package.module:Class` (or
`package.module.Class`), its constructor's keyword arguments given as `env.options`::

    import gymnasium as gym
    import numpy as np

    class Reach1D(gym.Env):
        '''Move a point on a line to a goal in [-1, 1].'''
        horizon = 50  # steps per episode unless env.horizon says otherwise

        def __init__(self, step_size: float = 0.1):
            self.step_size = step_size
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

        def sample_tasks(self, n, rng):
            return [{"goal": float(goal)} for goal in rng.uniform(-1.0, 1.0, n)]

        def set_task(self, task):
            self.goal = task["goal"]

        def task_observation(self, task):  # only needed for env.oracle=true
            return np.array([task["goal"]], np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.position = 0.0
            return np.array([self.position], np.float32), {}

        def step(self, action):
            self.position += self.step_size * float(action[0])
            distance = abs(self.position - self.goal)
            return np.array([self.position], np.float32), -distance, distance < 0.01, False, {}

    # python train.py algorithm=maml_rl env=user env.name=mypackage.reach:Reach1D \\
    #     +env.options.step_size=0.05
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control import CartPoleEnv, PendulumEnv

from metalearn.errors import UserError

log = logging.getLogger(__name__)

#: the methods every meta-RL environment has
TASK_PROTOCOL = ("sample_tasks", "set_task")

#: our families by config name: "module:Class"
ENVS = {
    "navigation2d": "metalearn.data.meta_envs:Navigation2D",
    "half_cheetah_vel": "metalearn.data.meta_envs:HalfCheetahVel",
    "half_cheetah_dir": "metalearn.data.meta_envs:HalfCheetahDir",
    "cartpole_varied": "metalearn.data.meta_envs:CartPoleVaried",
    "pendulum_varied": "metalearn.data.meta_envs:PendulumVaried",
}


def checked_range(option: str, bounds: Sequence[float]) -> tuple[float, float]:
    """`bounds` as (low, high) floats, refused in one line naming env.options.<option> unless
    two finite numbers with low <= high."""
    try:
        low, high = (float(value) for value in bounds)
    except (TypeError, ValueError):
        low, high = np.nan, np.nan
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        shown = list(bounds) if isinstance(bounds, Sequence) else bounds
        raise UserError(f"env.options.{option}={shown!r} must be [low, high]: two finite numbers "
                        "with low <= high")
    return low, high


def draw_tasks(rng: np.random.Generator, ranges: dict[str, tuple[float, float]],
               n: int) -> list[dict[str, float]]:
    """n tasks, each a dict with one float uniform in each range (drawn range by range)."""
    columns = {key: rng.uniform(*bounds, size=n).tolist() for key, bounds in ranges.items()}
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


class Navigation2D(gym.Env):
    """MAML's 2D navigation (rllab's point_env_randgoal): a point starts at the origin and moves
    by its action, clipped to [-0.1, 0.1] per coordinate; the reward is minus its distance to
    the goal, and the episode ends when it is within 0.01 of the goal in each coordinate (the
    reference code's test, a square of side 0.02). Goals are uniform in `goal_range`^2
    ([-0.5, 0.5]^2 in the paper), the horizon 100.
    """

    horizon = 100
    metadata = {"render_modes": []}

    def __init__(self, goal_range: Sequence[float] = (-0.5, 0.5)):
        self.goal_range = checked_range("goal_range", goal_range)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)
        # Python floats, not arrays: numpy's per-call cost was four fifths of a step
        self.goal = (0.0, 0.0)
        self.position = (0.0, 0.0)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict]:
        return [{"goal": goal} for goal in rng.uniform(*self.goal_range, size=(n, 2))]

    def set_task(self, task: dict) -> None:
        self.goal = tuple(float(value) for value in task["goal"])

    def task_observation(self, task: dict) -> np.ndarray:
        return np.asarray(task["goal"], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = (0.0, 0.0)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        (x, y), (dx, dy) = self.position, np.asarray(action, dtype=np.float64).tolist()
        self.position = x, y = x + min(max(dx, -0.1), 0.1), y + min(max(dy, -0.1), 0.1)
        offset_x, offset_y = x - self.goal[0], y - self.goal[1]
        reward = -math.sqrt(offset_x**2 + offset_y**2)
        reached = abs(offset_x) < 0.01 and abs(offset_y) < 0.01
        return np.array(self.position, dtype=np.float32), reward, reached, False, {}


def half_cheetah(name: str, reset_noise_scale: float) -> gym.Env:
    """gymnasium's MuJoCo HalfCheetah (v5), or a one-line UserError where mujoco is missing."""
    try:
        import mujoco
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
    except ImportError:
        raise UserError(f"env.name={name} needs MuJoCo (the mujoco package), which is not "
                        "installed; install it with: pip install 'metalearn[mujoco]'") from None
    # gymnasium's half_cheetah.xml uses an attribute MuJoCo deprecates: its warning, printed and
    # appended to ./MUJOCO_LOG.TXT for every env of the pool, is dropped; others are logged
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(logged_mujoco_warning)
    try:
        return HalfCheetahEnv(reset_noise_scale=reset_noise_scale)
    finally:
        mujoco.set_mju_user_warning(previous)


def logged_mujoco_warning(message: str) -> None:
    if "settotalmass" not in message:
        log.warning("MuJoCo: %s", message)


class HalfCheetahTask(gym.Wrapper):
    """gymnasium's HalfCheetah (17 observations: joint positions less the root's x, and
    velocities; reset noise 0.1, as ProMP's) with a task's reward in place of its own. The
    forward velocity is gymnasium's (the root's x displacement over the step's dt, as ProMP
    and learn2learn; rllab read the torso's centre-of-mass velocity), and the control cost is
    rllab's, `ctrl_cost_weight` * sum(a^2) with weight 0.5 * 0.1 (gymnasium's default is 0.1).
    The horizon is 200.
    """

    horizon = 200
    name = ""

    def __init__(self, ctrl_cost_weight: float = 0.05, reset_noise_scale: float = 0.1):
        super().__init__(half_cheetah(self.name, reset_noise_scale))
        self.ctrl_cost_weight = ctrl_cost_weight

    def task_reward(self, velocity: float) -> float:
        raise NotImplementedError

    def step(self, action):
        observation, _, terminated, truncated, info = self.env.step(action)
        control_cost = self.ctrl_cost_weight * float(np.square(action).sum())
        reward = self.task_reward(info["x_velocity"]) - control_cost
        return observation, reward, terminated, truncated, info


class HalfCheetahVel(HalfCheetahTask):
    """MAML's goal velocity: reward -|v - goal| minus the control cost, the goal uniform in
    `velocity_range` ([0, 2] in the paper)."""

    name = "half_cheetah_vel"

    def __init__(self, velocity_range: Sequence[float] = (0.0, 2.0),
                 ctrl_cost_weight: float = 0.05, reset_noise_scale: float = 0.1):
        self.velocity_range = checked_range("velocity_range", velocity_range)
        super().__init__(ctrl_cost_weight, reset_noise_scale)
        self.velocity = 0.0

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict]:
        return draw_tasks(rng, {"velocity": self.velocity_range}, n)

    def set_task(self, task: dict) -> None:
        self.velocity = float(task["velocity"])

    def task_observation(self, task: dict) -> np.ndarray:
        return np.array([task["velocity"]], dtype=np.float32)

    def task_reward(self, velocity: float) -> float:
        return -abs(velocity - self.velocity)


class HalfCheetahDir(HalfCheetahTask):
    """MAML's goal direction: reward direction * v minus the control cost, the direction +1
    (forward) or -1 (backward) with equal chance."""

    name = "half_cheetah_dir"

    def __init__(self, ctrl_cost_weight: float = 0.05, reset_noise_scale: float = 0.1):
        super().__init__(ctrl_cost_weight, reset_noise_scale)
        self.direction = 1.0

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict]:
        return [{"direction": direction} for direction in rng.choice([-1.0, 1.0], n).tolist()]

    def set_task(self, task: dict) -> None:
        self.direction = float(task["direction"])

    def task_observation(self, task: dict) -> np.ndarray:
        return np.array([task["direction"]], dtype=np.float32)

    def task_reward(self, velocity: float) -> float:
        return self.direction * velocity


class CartPoleVaried(CartPoleEnv):
    """gymnasium's CartPole (reward 1 a step until the pole falls or the cart leaves the track;
    push left or right) with its physics drawn per task: `length` (gymnasium's, half the
    pole's length; 0.5 by default), `pole_mass` (0.1), `cart_mass` (1.0) and `gravity` (9.8),
    each uniform in its range. The horizon is CartPole-v0's 200.
    """

    horizon = 200

    def __init__(self, length_range: Sequence[float] = (0.25, 1.0),
                 pole_mass_range: Sequence[float] = (0.05, 0.5),
                 cart_mass_range: Sequence[float] = (0.5, 2.0),
                 gravity_range: Sequence[float] = (4.9, 14.7)):
        super().__init__()
        self.ranges = {"length": checked_range("length_range", length_range),
                       "pole_mass": checked_range("pole_mass_range", pole_mass_range),
                       "cart_mass": checked_range("cart_mass_range", cart_mass_range),
                       "gravity": checked_range("gravity_range", gravity_range)}

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict]:
        return draw_tasks(rng, self.ranges, n)

    def set_task(self, task: dict) -> None:
        self.length, self.masspole = task["length"], task["pole_mass"]
        self.masscart, self.gravity = task["cart_mass"], task["gravity"]
        self.total_mass = self.masspole + self.masscart  # derived in CartPoleEnv.__init__
        self.polemass_length = self.masspole * self.length

    def task_observation(self, task: dict) -> np.ndarray:
        return np.array([task[key] for key in self.ranges], dtype=np.float32)


class PendulumVaried(PendulumEnv):
    """gymnasium's Pendulum (swing up and balance; torque in [-2, 2], the cost of angle,
    velocity and torque) with its `mass` (1.0 by default), `length` (1.0) and `gravity` (10.0)
    drawn per task, each uniform in its range. The horizon is Pendulum-v1's 200.
    """

    horizon = 200

    def __init__(self, mass_range: Sequence[float] = (0.5, 1.5),
                 length_range: Sequence[float] = (0.5, 1.5),
                 gravity_range: Sequence[float] = (5.0, 15.0)):
        super().__init__()
        self.ranges = {"mass": checked_range("mass_range", mass_range),
                       "length": checked_range("length_range", length_range),
                       "gravity": checked_range("gravity_range", gravity_range)}

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict]:
        return draw_tasks(rng, self.ranges, n)

    def set_task(self, task: dict) -> None:
        self.m, self.l, self.g = task["mass"], task["length"], task["gravity"]

    def task_observation(self, task: dict) -> np.ndarray:
        return np.array([task[key] for key in self.ranges], dtype=np.float32)
