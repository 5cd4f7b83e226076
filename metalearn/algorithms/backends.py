"""The two gradient backends of the MAML family and Reptile, and the one place that chooses between
them (`algorithm.backend`):

- `batched`: every task of a meta-batch at once, on torch.func (functional.TaskBatchedLoop);
- `per_task`: task by task, the reference: learn2learn's `MAML` wrapper (`clone()`, `adapt()`) for
  the MAML family, torch.optim on a copy of the learner for Reptile;
- `auto` (the default): the faster of the two for the network and device, as measured
  (experiments/results/bench.md), and `batched` whenever a setting needs it.

Both compute the same numbers (tests hold them to 1e-8 in float64) and keep the weights in the same
place, so checkpoints are interchangeable. The names of earlier versions, `functional` (batched)
and `learn2learn` (per_task), are still read, with a warning, so that old checkpoints and command
lines run.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from metalearn.algorithms.functional import Stats, TaskBatchedLoop
from metalearn.algorithms.gradient import GradientModule
from metalearn.data.episodes import TaskBatch
from metalearn.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "batched", "per_task")
#: earlier names of the backends, read as the current ones
RENAMED_BACKENDS = {"functional": "batched", "learn2learn": "per_task"}
#: the MAML family's settings that only the batched backend runs (auto then picks it)
BATCHED_ONLY_SETTINGS = ("compile", "checkpoint_inner_steps", "backward_per_task")


def checked_backend(backend: str, first_order: bool = False, compile: bool = False,
                    checkpoint_inner_steps: bool = False, backward_per_task: bool = False) -> str:
    """The configured backend by its current name, refused where unknown or where the settings
    need the other one."""
    if backend in RENAMED_BACKENDS:
        log.warning("algorithm.backend=%s is deprecated: it is now algorithm.backend=%s",
                    backend, RENAMED_BACKENDS[backend])
        backend = RENAMED_BACKENDS[backend]
    if backend not in BACKENDS:
        raise UserError(f"algorithm.backend={backend!r} is not one of: {', '.join(BACKENDS)}")
    if compile and backend == "per_task":  # learn2learn's second order is autograd.grad outside
        raise UserError("algorithm.compile=true needs algorithm.backend=batched (or auto); "
                        "torch.compile cannot differentiate the per_task backend twice")
    if checkpoint_inner_steps:
        if first_order:
            raise UserError("algorithm.checkpoint_inner_steps=true saves the memory of "
                            "second-order inner steps; first_order=true keeps none")
        if backend == "per_task" or compile:
            raise UserError("algorithm.checkpoint_inner_steps=true needs "
                            "algorithm.backend=batched (or auto) and compile=false")
    if backward_per_task and (backend == "per_task" or compile):
        raise UserError("algorithm.backward_per_task=true needs algorithm.backend=batched "
                        "(or auto) and compile=false")
    return backend


def has_convolutions(network: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in network.modules())


class GradientBackendModule(GradientModule):
    """A GradientModule whose tasks adapt in either backend (`hparams.backend`, which the subclass
    saves by its current name, checked_backend's). The subclass adapts and predicts a batch of
    tasks in both (`adapt_tasks`, `predict_tasks`); adapting one task and evaluating a batch of
    them are written here on top of those."""

    #: whether auto batches a fully connected learner on the CPU: yes for the MAML family (2.6x
    #: the task-by-task speed); not for Reptile, whose sinusoid MLP's 10,000 small steps took
    #: 192 s batched against 123 s
    batches_fully_connected_on_cpu = True

    def __init__(self, backbone: nn.Module, **gradient_args):
        super().__init__(backbone, **gradient_args)
        self.batched_loop: TaskBatchedLoop | None = None  # built on first use

    @property
    def backend(self) -> str:
        """The backend in use: the configured one, or what auto picks on the module's device,
        said in one log line whenever the pick changes."""
        hparams = self.hparams
        if hparams.backend != "auto":
            return hparams.backend
        batched = (any(hparams.get(setting) for setting in BATCHED_ONLY_SETTINGS)
                   or self.batched_is_faster())
        choice = "batched" if batched else "per_task"
        if getattr(self, "auto_choice", None) != choice:
            log.info("algorithm.backend=auto: the %s backend on %s", choice, self.device.type)
            self.auto_choice = choice
        return choice

    def batched_is_faster(self) -> bool:
        """On a GPU, always; on the CPU, not for a convolutional network, where vmap's batched
        (grouped) convolutions and the written-out BatchNorm ran at 0.6-0.8x the task-by-task
        speed (experiments/results/bench.md), and for a fully connected one as
        `batches_fully_connected_on_cpu` says."""
        if self.device.type != "cpu":
            return True
        return self.batches_fully_connected_on_cpu and not has_convolutions(
            self.adapted_network())

    def adapted_network(self) -> nn.Module:
        """The network the inner loop adapts."""
        return self.learner

    def task_batched_loop(self) -> TaskBatchedLoop:
        """The batched backend's loop over the adapted network."""
        if self.batched_loop is None:
            self.batched_loop = TaskBatchedLoop(self.adapted_network(), self.task_loss)
        return self.batched_loop

    # What a subclass implements in both backends ----------------------------------------------
    @abstractmethod
    def adapt_tasks(self, support_x: Tensor, support_y: Tensor, steps: int,
                    first_order: bool | None = None) -> tuple[Any, Stats | None]:
        """Each task of support [T, S, ...] adapted in `steps` steps (first_order None: the
        configured order), and the batch statistics of the batched backend's support passes in
        training mode (None where the passes move the running averages themselves)."""

    @abstractmethod
    def predict_tasks(self, adapted: Any, query_x: Tensor) -> tuple[Tensor, Stats | None]:
        """Query predictions [T, Q, ...] of the adapted tasks, and the batch statistics as
        adapt_tasks reports them."""

    # GradientModule and evaluation ------------------------------------------------------------
    # Nothing differentiates through test-time steps: first order keeps no graph. (Evaluation's
    # passes leave the running averages alone in the batched backend; the MAML family's per_task
    # passes in training mode move them, which matters to no prediction: they are used only with
    # transductive_bn=False, in eval mode.)
    def adapt_weights(self, support_x: Tensor, support_y: Tensor, steps: int) -> Any:
        return self.adapt_tasks(support_x[None], support_y[None], steps, first_order=True)[0]

    def predict_adapted(self, adapted: Any, query_x: Tensor) -> Tensor:
        return self.predict_tasks(adapted, query_x[None])[0][0]

    def predict_episodes(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Every test task of the batch adapted, then every query predicted (at once in the
        batched backend)."""
        steps = self.test_inner_steps if steps is None else steps
        with self.adaptation_mode(), torch.enable_grad():
            adapted, _ = self.adapt_tasks(batch.support_x, batch.support_y, steps,
                                          first_order=True)
        with self.adaptation_mode(), torch.no_grad():
            return self.predict_tasks(adapted, batch.query_x)[0]
