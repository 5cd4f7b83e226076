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
`gradient_clip_val`. So `train/loss` is that surrogate (half the squared distance the tasks pull
theta), `train/task_loss` the tasks' own loss at the last inner step, and `train/acc` (`train/mse`)
scores the queries at that step. `optimizer` defaults to SGD, which is Reptile; another one (Adam)
treats theta - mean_i W_i as a gradient, a variant the paper mentions.

What we changed, and why:
- each inner step takes the whole task (the paper's code takes minibatches, e.g. 5 of 10 for
  Omniglot): a task of tens of examples is one small batch;
- the inner Adam starts afresh on every task (the paper's code, by TensorFlow's design, kept its
  moment estimates across tasks and iterations), with beta1 = 0 as in that code;
- BatchNorm: the copies' running averages are averaged into theta's, so that
  `transductive_bn=False` (predict with them) has something meaningful; with
  `transductive_bn=True` (the default, as in the paper's transductive setting and our MAML)
  fine-tuning and prediction use the statistics of the task's own batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from itertools import chain

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from metalearn.algorithms.gradient import GradientModule
from metalearn.data.episodes import TaskBatch
from metalearn.errors import UserError

INNER_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    # beta1 = 0 as in the paper's code: no momentum over a handful of steps
    "adam": partial(torch.optim.Adam, betas=(0.0, 0.999)),
}


def mean_weights(modules: list[nn.Module]) -> dict[str, Tensor]:
    """Every parameter and buffer of `modules`, averaged over the modules (by name)."""
    named = [dict(chain(module.named_parameters(), module.named_buffers())) for module in modules]
    with torch.no_grad():
        return {name: sum(weights[name] for weights in named) / len(named) for name in named[0]}


class Reptile(GradientModule):
    """Args (besides GradientModule's):
        inner_lr: the inner optimiser's learning rate.
        inner_optimizer: "sgd" or "adam" (Adam with beta1 = 0, as the paper's code).
        anneal_outer_lr: epsilon falls linearly to 0 over training.
        optimizer: the outer optimiser; SGD, which is Reptile, by default.
    """

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.01,
        inner_optimizer: str = "adam",
        anneal_outer_lr: bool = True,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        **gradient_args,
    ):
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise UserError(f"algorithm.inner_optimizer={inner_optimizer!r} is not one of: "
                            f"{', '.join(INNER_OPTIMIZERS)}")
        if anneal_outer_lr and gradient_args.get("scheduler") is not None:
            raise UserError("algorithm.anneal_outer_lr=true is already a learning-rate schedule; "
                            "set algorithm.scheduler=null or algorithm.anneal_outer_lr=false")
        super().__init__(backbone, optimizer=optimizer or torch.optim.SGD, **gradient_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.inner_optimizer, self.inner_lr = inner_optimizer, inner_lr
        self.anneal_outer_lr = anneal_outer_lr

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

    def adapt_weights(self, support_x: Tensor, support_y: Tensor, steps: int) -> nn.Module:
        return self.fine_tune(support_x, support_y, steps)[0]

    def predict_adapted(self, adapted: nn.Module, query_x: Tensor) -> Tensor:
        return adapted(query_x)

    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """1/2 ||theta - mean_i W_i||^2 and the query predictions of each task's last inner step.

        Also moves theta's BatchNorm running averages to the mean of the tasks' (buffers are
        not optimised, so they take the update here).
        """
        adapted, task_losses, predictions = [], [], []
        for task in batch.tasks():
            x = torch.cat([task.support_x, task.query_x])
            y = torch.cat([task.support_y, task.query_y])
            learner, loss, outputs = self.fine_tune(x, y, self.inner_steps)
            adapted.append(learner)
            task_losses.append(loss)
            predictions.append(outputs[len(task.support_x):])
        target = mean_weights(adapted)
        with torch.no_grad():
            for name, buffer in self.learner.named_buffers():
                buffer.copy_(target[name])
        self.mean_task_loss = torch.stack(task_losses).mean()  # logged by training_step
        surrogate = sum(0.5 * (weight - target[name]).pow(2).sum()
                        for name, weight in self.learner.named_parameters())
        return surrogate, torch.stack(predictions)

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
