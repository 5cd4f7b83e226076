"""Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, ICML 2017).

Algorithm 2 of the paper: for each task of a meta-batch, take `inner_steps` SGD steps of size
`inner_lr` on the support loss from the shared initialisation, evaluate the adapted weights on the
query set, and update the initialisation with the outer optimiser (Adam, `outer_lr`) on the mean
query loss, differentiating through the inner steps (second order) unless `first_order=True`.
Evaluation adapts with `test_inner_steps` steps (the paper used 10 at test time, against 1 to 5
in training).

Two backends compute the same numbers (metalearn/algorithms/backends.py, which picks one): `batched`
runs every task of a meta-batch at once on torch.func, `per_task` runs learn2learn's `MAML`
wrapper, `clone()` and `adapt()`, task by task (`inner_loop`). The weights live in that wrapper in
both, so checkpoints are interchangeable.

Subclasses change what is adapted (ANIL adapts the output layer on top of a shared body) and how
(`wrap` and `update_rule`: Meta-SGD's learned rates). `allow_nograd` leaves parameters that do not
require gradients as they are; `allow_unused` lets the per_task backend adapt a network whose
support loss does not use every parameter (the batched backend always does: such a parameter's
gradient is zero).
"""

from __future__ import annotations

from collections.abc import Callable

import learn2learn as l2l
import torch
from torch import Tensor, nn

from metalearn.algorithms.backends import GradientBackendModule, checked_backend
from metalearn.algorithms.functional import Stats, UpdateRule, sgd, stacked_stats
from metalearn.data.episodes import TaskBatch
from metalearn.errors import UserError


def inner_loop(
    learner: l2l.algorithms.BaseLearner,
    support_x: Tensor,
    support_y: Tensor,
    steps: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    first_order: bool | None = None,
) -> l2l.algorithms.BaseLearner:
    """The per_task backend's adaptation of one task: clones `learner` and takes `steps`
    gradient steps on the support loss. The clone stays differentiable with respect to
    `learner`'s parameters (to first order only if `first_order`)."""
    adapted = learner.clone()
    for _ in range(steps):
        adapted.adapt(loss_fn(adapted(support_x), support_y), first_order=first_order)
    return adapted


def float32(x: Tensor) -> Tensor:
    """Inputs of the inner loop in float32 at least (float64 runs stay float64); token ids stay
    integers."""
    if not x.is_floating_point():
        return x
    return x.to(torch.promote_types(x.dtype, torch.float32))


class MAML(GradientBackendModule):
    """Args (besides GradientModule's):
        inner_lr: the inner SGD step size (paper: 0.4 on Omniglot, 0.01 on the sinusoid).
        first_order: drop the second-order terms of the meta-gradient (FOMAML).
        allow_unused: let the per_task backend skip parameters the support loss does not use.
        allow_nograd: leave parameters that do not require gradients as they are.
        backend: "batched" (tasks batched on torch.func), "per_task" (learn2learn, task by task)
            or "auto": per_task for a convolutional learner on the CPU, batched elsewhere.
        compile: run the batched backend's meta-training loss (forward and backward) through
            torch.compile (auto then means batched); the first step compiles for minutes
            (README, Performance).
        checkpoint_inner_steps: keep no activations of the inner steps for the meta-gradient
            but recompute them in the backward pass, task by task (the batched backend; auto
            then means batched): less memory for second-order steps, more time.
        backward_per_task: take each task's meta-gradient as soon as its query loss is known and
            free its graph, so that one task's graph is held at a time instead of the
            meta-batch's; the step's loss is a surrogate with the same value and gradient
            (the batched backend; one process).
    """

    def __init__(self, backbone: nn.Module, inner_lr: float = 0.4, first_order: bool = False,
                 allow_unused: bool | None = None, allow_nograd: bool = False,
                 backend: str = "auto", compile: bool = False,
                 checkpoint_inner_steps: bool = False, backward_per_task: bool = False,
                 **gradient_args):
        backend = checked_backend(backend, first_order, compile, checkpoint_inner_steps,
                                  backward_per_task)
        super().__init__(backbone, **gradient_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.hparams.backend = backend  # a subclass's arguments may hold its earlier name
        if not allow_nograd and not all(p.requires_grad for p in self.learner.parameters()):
            # learn2learn refuses to differentiate them; the batched backend would adapt them
            raise UserError(f"{type(self).__name__}: the backbone has frozen weights (e.g. "
                            "backbone.freeze=true), which the inner loop would adapt; set "
                            "algorithm.allow_nograd=true to leave them as they are, or "
                            "backbone.freeze=false")
        self.learner = self.wrap(self.learner)
        self.compiled_loss: Callable | None = None  # built on first use, when compile

    def wrap(self, model: nn.Module) -> l2l.algorithms.BaseLearner:
        """The learn2learn wrapper that holds the learner (and clones and adapts it in the
        per_task backend)."""
        hparams = self.hparams
        return l2l.algorithms.MAML(
            model, lr=hparams.inner_lr, first_order=hparams.first_order,
            allow_unused=hparams.allow_unused, allow_nograd=hparams.allow_nograd,
        )

    def update_rule(self) -> UpdateRule:
        """The batched backend's inner step: SGD of size inner_lr."""
        return sgd({name: self.hparams.inner_lr for name, _ in self.adapted_parameters()})

    def body_network(self) -> nn.Module | None:
        """What the adapted network reads, shared by all tasks (ANIL's); None: the inputs."""
        return None

    def adapted_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The learner's parameters the inner loop adapts (all, but frozen ones with
        allow_nograd)."""
        return [(name, p) for name, p in self.learner.module.named_parameters()
                if p.requires_grad or not self.hparams.allow_nograd]

    def adapted_network(self) -> nn.Module:
        return self.learner.module

    # Adapting and predicting a batch of tasks -------------------------------------------------
    def adapt_tasks(self, support_x: Tensor, support_y: Tensor, steps: int,
                    first_order: bool | None = None) -> tuple[object, Stats | None]:
        """In float32 under mixed precision too: 16-bit support passes moved the meta-gradient
        by 22-58% (bf16) or overflowed float16 (README, Precision). per_task: learn2learn
        clones, whose passes move the running averages themselves."""
        first_order = self.hparams.first_order if first_order is None else first_order
        with torch.autocast(support_x.device.type, enabled=False):
            if self.backend == "per_task":
                return [inner_loop(self.learner, float32(self.features(x)), y, steps,
                                   self.task_loss, first_order)
                        for x, y in zip(support_x, support_y)], None
            adaptation = self.task_batched_loop().adapt(
                float32(self.task_features(support_x)), support_y, steps, self.update_rule,
                first_order, self.training, {name for name, _ in self.adapted_parameters()},
                recompute=self.hparams.checkpoint_inner_steps)
        return adaptation.weights, adaptation.stats

    def predict_tasks(self, adapted: object, query_x: Tensor) -> tuple[Tensor, Stats | None]:
        if self.backend == "per_task":
            return torch.stack([learner(self.features(x))
                                for learner, x in zip(adapted, query_x)]), None
        return self.task_batched_loop().predict(adapted, self.task_features(query_x),
                                                self.training, report=self.training,
                                                batched=not self.hparams.checkpoint_inner_steps)

    def features(self, x: Tensor) -> Tensor:
        """What the adapted learner reads: the inputs (ANIL: the body's features)."""
        body = self.body_network()
        return x if body is None else body(x)

    def task_features(self, x: Tensor) -> Tensor:
        """features of each task of x [T, N, ...]. ANIL's body runs task by task as an ordinary
        module: its weights are shared, and in training mode each pass normalises with its own
        task's statistics and moves the running averages itself (in the per_task backend's
        order: all supports, then all queries); batched with vmap it ran at half the speed
        on the CPU (experiments/results/bench.md)."""
        return x if self.body_network() is None else torch.stack([self.features(t) for t in x])

    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        if not (self.hparams.compile and self.training):
            return self.meta_batch_loss(batch)
        if self.compiled_loss is None:
            self.compiled_loss = torch.compile(self.meta_batch_loss)
        return self.compiled_loss(batch)

    def meta_batch_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The mean query loss of the adapted tasks, and their query predictions."""
        if self.hparams.backward_per_task and self.training and torch.is_grad_enabled():
            return self.meta_batch_loss_per_task(batch)
        adapted, support_stats = self.adapt_tasks(batch.support_x, batch.support_y,
                                                  self.inner_steps)
        predictions, query_stats = self.predict_tasks(adapted, batch.query_x)
        if support_stats is not None and self.training:
            self.task_batched_loop().update_running_averages(support_stats, query_stats)
        losses = [self.task_loss(p, y) for p, y in zip(predictions, batch.query_y)]
        return torch.stack(losses).mean(), predictions

    def meta_batch_loss_per_task(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """meta_batch_loss with each task's meta-gradient taken, and its graph freed, before
        the next task is adapted. Returns a surrogate loss: the mean query loss in value, whose
        gradient is the sum of the tasks' gradients; the running averages move as
        meta_batch_loss moves them (every task's support passes, then the queries)."""
        parameters = [p for p in self.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in parameters]
        losses, predictions, support_stats, query_stats = [], [], [], []
        for task in range(batch.support_x.shape[0]):
            one = slice(task, task + 1)
            adapted, support = self.adapt_tasks(batch.support_x[one], batch.support_y[one],
                                                self.inner_steps)
            prediction, query = self.predict_tasks(adapted, batch.query_x[one])
            loss = self.task_loss(prediction[0], batch.query_y[task]) / len(batch.support_x)
            for sum_, gradient in zip(total, torch.autograd.grad(loss, parameters,
                                                                 allow_unused=True)):
                if gradient is not None:
                    sum_ += gradient
            losses.append(loss.detach())
            predictions.append(prediction.detach())
            support_stats.append(support)
            query_stats.append(query)
        # each task's statistics [1, C] stacked into the meta-batch's [T, C]
        self.task_batched_loop().update_running_averages(*(
            stacked_stats([[(mean[0], variance[0]) for mean, variance in task] for task in stats])
            for stats in (support_stats, query_stats) if stats[0]))
        surrogate = sum((p * g).sum() for p, g in zip(parameters, total))
        return torch.stack(losses).sum() + surrogate - surrogate.detach(), torch.cat(predictions)

    def on_fit_start(self) -> None:
        if self.hparams.backward_per_task and self.trainer.world_size > 1:
            raise UserError("algorithm.backward_per_task=true runs in one process; under DDP "
                            "each process holds only its share of the meta-batch already")
