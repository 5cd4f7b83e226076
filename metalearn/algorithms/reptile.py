"""Reptile (Nichol, Achiam and Schulman 2018, "On First-Order Meta-Learning Algorithms").

Algorithm 2 of the paper, batched Reptile:

    initialise theta
    for iteration = 1, 2, ...
        sample tasks tau_1, ..., tau_n
        for i = 1, ..., n
            W_i = U^k_tau_i(theta)         k steps of SGD or Adam on task tau_i, from theta
        theta <- theta + epsilon * 1/n sum_i (W_i - theta)

No second derivatives, and no support/query split in meta-training: every label of a training
task is known, so the inner loop fits its support and query examples together (`inner_steps`
steps of `inner_optimizer` at `inner_lr`). Evaluation fine-tunes a copy of theta on the support
set alone (`test_inner_steps` steps) and predicts the queries. epsilon is `outer_lr`; with
`anneal_outer_lr` it falls linearly to 0 over training, as in the paper.

The outer update is written as one SGD step of rate epsilon on the surrogate loss
1/2 ||theta - mean_i W_i||^2 (the W_i constants), whose gradient is exactly theta - mean_i W_i.
Lightning's ordinary loop then makes the Reptile step, with the trainer's gradient clipping (of
the step), precision and schedules; manual optimisation would rule out the trainer's
`gradient_clip_val`. The loss a step returns has that surrogate's gradient but the value of the
tasks' query loss after their inner steps, so that `train/loss` (and the Python API's
`meta_train_step`) reads as every other algorithm's: how well the adapted learners predict the
queries, scored by `train/acc` (`train/mse`) too. `train/task_loss` is the tasks' loss on all
their examples at the last inner step. `optimizer` defaults to SGD, which is Reptile; another one
(Adam) treats theta - mean_i W_i as a gradient, a variant the paper mentions.

What we changed, and why:
- each inner step takes the whole task (the paper's code takes minibatches, e.g. 5 of 10 for
  Omniglot): a task of tens of examples is one small batch;
- the inner Adam starts afresh on every task (the paper's code, by TensorFlow's design, kept its
  moment estimates across tasks and iterations), with beta1 = 0 as in that code;
- BatchNorm: the copies' running averages are averaged into theta's, so that
  `transductive_bn=False` (predict with them) has something meaningful; with
  `transductive_bn=True` (the default, as in the paper's transductive setting and our MAML)
  fine-tuning and prediction use the statistics of the task's own batch.

Two backends compute the same numbers (metalearn/algorithms/backends.py, which picks one):
`batched` fine-tunes every task of a meta-batch at once on torch.func, `per_task` fine-tunes a
copy of the network per task with torch.optim, the reference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from itertools import chain

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from metalearn.algorithms.backends import GradientBackendModule, checked_backend
from metalearn.algorithms.base import EpisodicModule
from metalearn.algorithms.functional import Adaptation, Stats, UpdateRule, adam, sgd
from metalearn.data.episodes import TaskBatch
from metalearn.errors import UserError

INNER_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    # beta1 = 0 as in the paper's code: no momentum over a handful of steps
    "adam": partial(torch.optim.Adam, betas=(0.0, 0.999)),
}


def mean_weights(named: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Named tensors averaged over the list (by name)."""
    with torch.no_grad():
        return {name: sum(weights[name] for weights in named) / len(named) for name in named[0]}


def named_weights(module: nn.Module) -> dict[str, Tensor]:
    """A module's parameters and buffers by name."""
    return dict(chain(module.named_parameters(), module.named_buffers()))


class Reptile(GradientBackendModule):
    """Args (besides GradientModule's):
        inner_lr: the inner optimiser's learning rate.
        inner_optimizer: "sgd" or "adam" (Adam with beta1 = 0, as the paper's code).
        anneal_outer_lr: epsilon falls linearly to 0 over training.
        optimizer: the outer optimiser; SGD, which is Reptile, by default.
        backend: "batched" (tasks batched on torch.func), "per_task" (torch.optim on a copy
            per task) or "auto": per_task on the CPU, batched on a GPU.
    """

    batches_fully_connected_on_cpu = False

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.01,
        inner_optimizer: str = "adam",
        anneal_outer_lr: bool = True,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        backend: str = "auto",
        inner_steps: int = 3,
        test_inner_steps: int = 5,
        outer_lr: float = 1.0,
        **gradient_args,
    ):
        backend = checked_backend(backend)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise UserError(f"algorithm.inner_optimizer={inner_optimizer!r} is not one of: "
                            f"{', '.join(INNER_OPTIMIZERS)}")
        if anneal_outer_lr and gradient_args.get("scheduler") is not None:
            raise UserError("algorithm.anneal_outer_lr=true is already a learning-rate schedule; "
                            "set algorithm.scheduler=null or algorithm.anneal_outer_lr=false")
        super().__init__(backbone, inner_steps=inner_steps, test_inner_steps=test_inner_steps,
                         outer_lr=outer_lr, optimizer=optimizer or torch.optim.SGD,
                         **gradient_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.inner_optimizer, self.inner_lr = inner_optimizer, inner_lr
        self.anneal_outer_lr = anneal_outer_lr

    # The per_task backend -----------------------------------------------------------------------
    def fine_tune(self, x: Tensor, y: Tensor, steps: int) -> tuple[nn.Module, Tensor, Tensor]:
        """A copy of the learner after `steps` full-batch inner steps on (x, y), in the module's
        mode (training: batch statistics), with the loss and predictions of its last step
        (computed before that step's update). In float32 under mixed precision too, as MAML's
        inner loop."""
        learner = copy.deepcopy(self.learner)
        optimizer = INNER_OPTIMIZERS[self.inner_optimizer](learner.parameters(), lr=self.inner_lr)
        with torch.autocast(x.device.type, enabled=False):
            for _ in range(steps):
                predictions = learner(x)
                loss = self.task_loss(predictions, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return learner, loss.detach(), predictions.detach()

    # The batched backend -----------------------------------------------------------------------
    def inner_rule(self) -> Callable[[], UpdateRule]:
        """The inner optimiser as a functional update rule (torch.optim's arithmetic)."""
        if self.inner_optimizer == "adam":
            return adam(self.inner_lr)
        rates = {name: self.inner_lr for name, _ in self.learner.named_parameters()}
        return lambda: sgd(rates)

    def fine_tune_tasks(self, x: Tensor, y: Tensor, steps: int) -> Adaptation:
        """fine_tune of every task of x [T, N, ...] at once."""
        with torch.autocast(x.device.type, enabled=False):
            return self.task_batched_loop().adapt(x, y, steps, self.inner_rule(),
                                                  first_order=True, training=self.training)

    def buffers_after(self, adaptation: Adaptation) -> list[dict[str, Tensor]]:
        """Each task's copy of the learner's buffers, moved by its inner steps' passes."""
        initial = dict(self.learner.named_buffers())
        saved = {name: buffer.clone() for name, buffer in initial.items()}
        per_task = []
        with torch.no_grad():
            for task in range(len(adaptation.loss)):
                for name, buffer in initial.items():
                    buffer.copy_(saved[name])
                self.task_batched_loop().update_running_averages(
                    [(mean[task:task + 1], variance[task:task + 1])
                     for mean, variance in adaptation.stats])
                per_task.append({name: buffer.clone() for name, buffer in initial.items()})
            for name, buffer in initial.items():
                buffer.copy_(saved[name])
        return per_task

    # GradientBackendModule ---------------------------------------------------------------------
    def adapt_tasks(self, support_x: Tensor, support_y: Tensor, steps: int,
                    first_order: bool | None = None) -> tuple[object, Stats | None]:
        """Each task fine-tuned on its support set (first order, whatever `first_order` says)."""
        if self.backend == "per_task":
            return [self.fine_tune(x, y, steps)[0] for x, y in zip(support_x, support_y)], None
        adaptation = self.fine_tune_tasks(support_x, support_y, steps)
        return adaptation.weights, adaptation.stats

    def predict_tasks(self, adapted: object, query_x: Tensor) -> tuple[Tensor, Stats | None]:
        if self.backend == "per_task":
            return torch.stack([learner(x) for learner, x in zip(adapted, query_x)]), None
        return self.task_batched_loop().predict(adapted, query_x, self.training)

    def predict_episodes(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        if self.backend == "per_task":  # one copy fine-tuned and used at a time, not a batch's
            return EpisodicModule.predict_episodes(self, batch, steps)
        return super().predict_episodes(batch, steps)

    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """The tasks' mean query loss after their inner steps, with the gradient of
        1/2 ||theta - mean_i W_i||^2, and those query predictions.

        Also moves theta's BatchNorm running averages to the mean of the tasks' (buffers are
        not optimised, so they take the update here).
        """
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        if self.backend == "per_task":
            tuned = [self.fine_tune(*task, self.inner_steps) for task in zip(x, y)]
            adapted = [learner for learner, _, _ in tuned]
            target = mean_weights([named_weights(learner) for learner in adapted])
            task_losses = torch.stack([loss for _, loss, _ in tuned])
        else:
            adaptation = self.fine_tune_tasks(x, y, self.inner_steps)
            adapted = adaptation.weights
            target = {**{name: w.detach().mean(0) for name, w in adaptation.weights.items()},
                      **mean_weights(self.buffers_after(adaptation))}
            task_losses = adaptation.loss
        with torch.no_grad():
            for name, buffer in self.learner.named_buffers():
                buffer.copy_(target[name])
            # after the target is taken: predicting moves the per_task copies' running averages
            predictions, _ = self.predict_tasks(adapted, batch.query_x)
        self.mean_task_loss = task_losses.mean()  # logged by training_step
        query_loss = self.task_loss(predictions.flatten(0, 1), batch.query_y.flatten(0, 1))
        surrogate = sum(0.5 * (weight - target[name]).pow(2).sum()
                        for name, weight in self.learner.named_parameters())
        # the value a reader compares with other algorithms' losses; the gradient Reptile's
        return query_loss + (surrogate - surrogate.detach()), predictions

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/task_loss", self.mean_task_loss)
        return loss

    def configure_optimizers(self):
        if not self.anneal_outer_lr:
            return super().configure_optimizers()
        optimizer = self.optimizer_factory(self.parameters(), lr=self.outer_lr)
        total_steps = self.trainer.estimated_stepping_batches
        # step s of 0..T-1 uses epsilon * (1 - s/T), as the paper's code
        annealing = LambdaLR(optimizer, lambda step: 1 - step / total_steps)
        schedule = {"scheduler": annealing, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}
