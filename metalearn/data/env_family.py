"""The task family of meta-reinforcement learning: a distribution of environments (the `env`
config group, `configs/env/<name>.yaml`).

`EnvFamily` names an environment class (ours in metalearn/data/meta_envs.py, or a user's
following its task protocol), checks its options, and draws tasks: meta-training tasks from the
data module's generator, held-out tasks from a seed alone, so every run is scored on the same
ones. `rollout` runs a policy on tasks with a pool of envs kept between calls
(metalearn/data/rollouts.py, which also gives its measured steps per second).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metalearn.data.meta_envs import ENVS, TASK_PROTOCOL
from metalearn.data.rollouts import PolicyFunction, Trajectories, rollout
from metalearn.data.task_family import SPLITS
from metalearn.errors import UserError, check_whole_number

#: the largest seed a torch generator gives for a task draw's numpy Generator
MAX_SEED = 2**62


def environment_class(name: str) -> type:
    """The class `name` stands for: one of ENVS, or "package.module:Class" /
    "package.module.Class", checked to be a gymnasium.Env with the task protocol."""
    path = ENVS.get(name, name)
    module_name, _, class_name = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not module_name:
        raise UserError(f"env.name={name!r} is not a known environment ({', '.join(ENVS)}); a "
                        "user's class is given as package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"env.name={name!r}: cannot import {module_name} ({error}); the known "
                        f"environments are {', '.join(ENVS)}") from None
    found = getattr(module, class_name, None)
    if not inspect.isclass(found):
        raise UserError(f"env.name={name!r}: {module_name} has no class {class_name}")
    if not issubclass(found, gym.Env):
        raise UserError(f"env.name={name!r}: {found.__name__} is not a gymnasium.Env")
    missing = [method for method in TASK_PROTOCOL if not callable(getattr(found, method, None))]
    if missing:
        raise UserError(f"env.name={name!r}: {found.__name__} lacks {' and '.join(missing)}; a "
                        "meta-RL environment has sample_tasks(n, rng) -> list of tasks and "
                        "set_task(task) (see metalearn/data/meta_envs.py)")
    return found


def checked_options(name: str, cls: type, options: dict) -> dict:
    """`options` if the constructor of `cls` takes each of them as a keyword argument."""
    parameters = inspect.signature(cls).parameters.values()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return options
    accepted = [parameter.name for parameter in parameters
                if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)]
    for option in options:
        if option not in accepted:
            raise UserError(f"env.options.{option} is not an option of {name} "
                            f"({cls.__name__}); its options: {', '.join(accepted) or 'none'}")
    return options


def json_value(value: Any) -> Any:
    """A task's value as JSON: numbers and arrays as numbers and lists, anything else its
    repr."""
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


class EnvFamily:
    """A distribution of environments.

    Args:
        name: one of ENVS (navigation2d, half_cheetah_vel, half_cheetah_dir, cartpole_varied,
            pendulum_varied), or a user's class as "package.module:Class" or
            "package.module.Class" (metalearn/data/meta_envs.py says what it must have).
        horizon: steps per episode; None: the env's own (its `horizon` attribute, or its
            spec's max_episode_steps).
        options: the env constructor's keyword arguments.
        oracle: append task_observation(task) to every observation (the oracle baseline: the
            task given as input).
    """

    task_type = "reinforcement"

    def __init__(self, name: str, horizon: int | None = None, options: dict | None = None,
                 oracle: bool = False):
        self.name, self.oracle = name, oracle
        self.cls = environment_class(name)
        self.options = checked_options(name, self.cls, dict(options or {}))
        self.env = self.cls(**self.options)
        self.pool = [self.env]
        try:
            inspect.signature(self.env.sample_tasks).bind(1, None)
        except TypeError:
            raise UserError(f"env.name={name!r}: {self.cls.__name__}.sample_tasks must take "
                            "(n, rng), the number of tasks and a numpy Generator to draw them "
                            "with") from None
        if horizon is None:
            spec = getattr(self.env, "spec", None)
            horizon = getattr(self.env, "horizon", None) or (spec and spec.max_episode_steps)
            if horizon is None:
                raise UserError(f"env.horizon is needed: {self.cls.__name__} has no horizon of "
                                "its own (a `horizon` attribute); set env.horizon=<steps>")
        self.horizon = check_whole_number("env.horizon", horizon)
        if oracle and not callable(getattr(self.env, "task_observation", None)):
            raise UserError(f"env.oracle=true needs {self.cls.__name__}.task_observation(task), "
                            "the task as a vector the oracle sees; it has none")
        self.action_space = self.env.action_space
        self.observation_space = self.env.observation_space
        if oracle:
            width = len(self.env.task_observation(self.sample_tasks(1, torch.Generator())[0]))
            low, high = self.observation_space.low, self.observation_space.high
            self.observation_space = gym.spaces.Box(
                np.concatenate([low, np.full(width, -np.inf)]).astype(np.float32),
                np.concatenate([high, np.full(width, np.inf)]).astype(np.float32))

    def sample_tasks(self, n: int, generator: torch.Generator) -> list:
        """n meta-training tasks, all randomness from `generator`."""
        seed = int(torch.randint(MAX_SEED, (), generator=generator))
        return self.tasks_from(n, np.random.default_rng(seed))

    def held_out_tasks(self, split: str, n: int, seed: int) -> list:
        """The `split` ("val" or "test") tasks of `seed`: the same n tasks whatever was drawn
        before."""
        return self.tasks_from(n, np.random.default_rng([seed, SPLITS.index(split)]))

    def tasks_from(self, n: int, rng: np.random.Generator) -> list:
        tasks = list(self.env.sample_tasks(n, rng))
        if len(tasks) != n:
            raise UserError(f"env.name={self.name!r}: {self.cls.__name__}.sample_tasks({n}, rng) "
                            f"returned {len(tasks)} tasks; it must return {n}")
        return tasks

    def rollout(self, policy: PolicyFunction, tasks: list, episodes_per_task: int, seed: int,
                device: torch.device | str = "cpu") -> Trajectories:
        """`episodes_per_task` episodes of each task (metalearn/data/rollouts.py)."""
        check_whole_number("algorithm.episodes_per_task", episodes_per_task)
        count = len(tasks) * episodes_per_task
        self.pool.extend(self.cls(**self.options) for _ in range(count - len(self.pool)))
        extra = (np.stack([self.env.task_observation(task) for task in tasks])
                 if self.oracle else None)
        return rollout(self.pool, policy, tasks, episodes_per_task, self.horizon, seed, extra,
                       device)

    def input_record(self) -> dict:
        return {"observation_shape": list(self.observation_space.shape),
                "action_space": str(self.action_space)}

    def split_record(self) -> None:
        """None: tasks come from a distribution."""

    def describe(self, task) -> dict:
        """The task as JSON numbers ({"goal": [x, y]}); a task that is not a dict as {"task":
        ...}."""
        value = json_value(task)
        return value if isinstance(value, dict) else {"task": value}

    def __getstate__(self) -> dict:
        """Pickled (a data loader's worker, a deep copy) without the pool of envs, rebuilt as
        rollouts need it."""
        state = dict(self.__dict__)
        state["pool"] = [self.env]
        return state
