"""Sinusoid regression tasks from the MAML paper (Finn et al. 2017, section 5.1).

A task is y = A sin(x - phase) with A ~ U[amplitude], phase ~ U[phase]; its K support and Q query
points have x ~ U[x_range]. The family is continuous, so meta-train / meta-val / meta-test differ
only in the random stream they are drawn from (the data module seeds each split apart).
"""

from __future__ import annotations

import math

import torch

from metalearn.data.episodes import TaskBatch
from metalearn.data.task_family import EpisodeSettings, TaskFamily
from metalearn.errors import UserError


class Sinusoid(TaskFamily):
    task_type = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ):
        for key, (low, high) in {"amplitude": amplitude, "phase": phase, "x_range": x_range}.items():
            if not low <= high:
                raise UserError(f"dataset.{key}=[{low}, {high}] must be [low, high] with low <= high")
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)

    def num_classes(self, split: str) -> None:
        """None: tasks come from a continuum, not a finite set."""

    def check_fits(self, episode: EpisodeSettings, name: str) -> None:
        """Any number of points can be drawn from a sinusoid."""

    def sample(self, split, shape, batch_size, generator):
        def uniform(bounds, *shape):
            low, high = bounds
            return low + (high - low) * torch.rand(*shape, generator=generator)

        _, k_shot, query_size = shape
        amplitude = uniform(self.amplitude, batch_size, 1, 1)
        phase = uniform(self.phase, batch_size, 1, 1)
        x = uniform(self.x_range, batch_size, k_shot + query_size, 1)
        y = amplitude * torch.sin(x - phase)
        return TaskBatch(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:])
