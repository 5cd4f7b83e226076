"""Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, ICML 2017), through learn2learn's `MAML`.

Algorithm 2 of the paper: for each task of a meta-batch, take `inner_steps` SGD steps of size
`inner_lr` on the support loss from the shared initialisation, evaluate the adapted weights on the
query set, and update the initialisation with the outer optimiser (Adam, `outer_lr`) on the mean
query loss, differentiating through the inner steps (second order) unless `first_order=True`.
Evaluation adapts with `test_inner_steps` steps (the paper used 10 at test time, against 1 to 5
in training).

Subclasses change what is adapted (`features`: ANIL adapts the output layer on top of a shared
body) and how (`wrap`: Meta-SGD's learned rates). learn2learn's `allow_unused` and
`allow_nograd` let the inner loop skip parameters the support loss does not use or that do not
require gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import learn2learn as l2l
import torch
from torch import Tensor, nn

from metalearn.algorithms.gradient import GradientModule
from metalearn.data.episodes import TaskBatch


def inner_loop(
    learner: l2l.algorithms.BaseLearner,
    support_x: Tensor,
    support_y: Tensor,
    steps: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    first_order: bool | None = None,
) -> l2l.algorithms.BaseLearner:
    """Clones `learner` and takes `steps` gradient steps on the support loss.

    The one place where MAML-family algorithms adapt; a faster backend can replace it alone.
    The clone stays differentiable with respect to `learner`'s parameters (to first order only
    if `first_order`). It runs in float32 under mixed precision too: the adapted weights set the
    point where the query gradient is taken, and 16-bit support passes moved the meta-gradient by
    22-58% (bf16) or overflowed float16 (README, Precision).
    """
    with torch.autocast(support_x.device.type, enabled=False):
        # ANIL's body features come from autocast in 16 bits (float64 runs stay float64)
        support_x = support_x.to(torch.promote_types(support_x.dtype, torch.float32))
        adapted = learner.clone()
        for _ in range(steps):
            adapted.adapt(loss_fn(adapted(support_x), support_y), first_order=first_order)
    return adapted


class MAML(GradientModule):
    """Args (besides GradientModule's):
        inner_lr: the inner SGD step size (paper: 0.4 on Omniglot, 0.01 on the sinusoid).
        first_order: drop the second-order terms of the meta-gradient (FOMAML).
        allow_unused: let the inner loop skip parameters the support loss does not use.
        allow_nograd: let it skip parameters that do not require gradients (kept as they are).
    """

    def __init__(self, backbone: nn.Module, inner_lr: float = 0.4, first_order: bool = False,
                 allow_unused: bool | None = None, allow_nograd: bool = False, **gradient_args):
        super().__init__(backbone, **gradient_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.learner = self.wrap(self.learner)

    def wrap(self, model: nn.Module) -> l2l.algorithms.BaseLearner:
        """The learn2learn wrapper that clones and adapts the learner."""
        hparams = self.hparams
        return l2l.algorithms.MAML(
            model, lr=hparams.inner_lr, first_order=hparams.first_order,
            allow_unused=hparams.allow_unused, allow_nograd=hparams.allow_nograd,
        )

    def features(self, x: Tensor) -> Tensor:
        """What the adapted learner reads: the inputs themselves (ANIL: its body's features)."""
        return x

    def adapt_weights(self, support_x: Tensor, support_y: Tensor, steps: int,
                      first_order: bool = True) -> l2l.algorithms.BaseLearner:
        """first_order defaults to True: at test time nothing differentiates through the steps,
        so no graph is kept (the adapted weights are the same)."""
        return inner_loop(self.learner, self.features(support_x), support_y, steps,
                          self.task_loss, first_order)

    def predict_adapted(self, adapted: l2l.algorithms.BaseLearner, query_x: Tensor) -> Tensor:
        return adapted(self.features(query_x))

    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        predictions = [
            self.predict_adapted(self.adapt_weights(task.support_x, task.support_y,
                                                    self.inner_steps, first_order=None), task.query_x)
            for task in batch.tasks()
        ]
        losses = [self.task_loss(p, y) for p, y in zip(predictions, batch.query_y)]
        return torch.stack(losses).mean(), torch.stack(predictions)
