"""Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, ICML 2017), through learn2learn's `MAML`.

Algorithm 2 of the paper: for each task of a meta-batch, take `inner_steps` SGD steps of size
`inner_lr` on the support loss from the shared initialisation, evaluate the adapted weights on the
query set, and update the initialisation with the outer optimiser (Adam, `outer_lr`) on the mean
query loss, differentiating through the inner steps (second order) unless `first_order=True`.
Evaluation adapts with `test_inner_steps` steps (the paper used 10 at test time, against 1 to 5
in training).

The learner is the backbone followed by a linear head of `output_dim` units. BatchNorm: with
`transductive_bn=True` (the default, and the convention of the original MAML code) adaptation and
prediction at test time use the statistics of the task's own batch, as during meta-training;
with False they use the running averages collected during meta-training.
"""

from __future__ import annotations

from collections.abc import Callable

import learn2learn as l2l
import torch
from torch import Tensor, nn

from metalearn.algorithms.base import EpisodicModule
from metalearn.data.episodes import Episode


def inner_loop(
    learner: l2l.algorithms.MAML,
    support_x: Tensor,
    support_y: Tensor,
    steps: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    first_order: bool | None = None,
) -> l2l.algorithms.MAML:
    """Clones `learner` and takes `steps` gradient steps on the support loss.

    The one place where MAML-family algorithms adapt; a faster backend can replace it alone.
    The clone stays differentiable with respect to `learner`'s parameters (to first order only
    if `first_order`).
    """
    adapted = learner.clone()
    for _ in range(steps):
        adapted.adapt(loss_fn(adapted(support_x), support_y), first_order=first_order)
    return adapted


class MAML(EpisodicModule):
    supported_task_types = ("classification", "regression")

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        test_inner_steps: int = 3,
        first_order: bool = False,
        allow_unused: bool | None = None,
        allow_nograd: bool = False,
        transductive_bn: bool = True,
        **base_args,
    ):
        super().__init__(**base_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.inner_steps, self.test_inner_steps = inner_steps, test_inner_steps
        self.transductive_bn = transductive_bn
        model = nn.Sequential(backbone, nn.Linear(backbone.out_features, self.output_dim))
        self.learner = l2l.algorithms.MAML(
            model, lr=inner_lr, first_order=first_order,
            allow_unused=allow_unused, allow_nograd=allow_nograd,
        )

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int,
              first_order: bool | None = None) -> l2l.algorithms.MAML:
        return inner_loop(self.learner, support_x, support_y, steps, self.task_loss, first_order)

    def meta_train_loss(self, batch: Episode) -> tuple[Tensor, Tensor]:
        total, predictions = 0.0, []
        for task in map(batch.task, range(batch.num_tasks)):
            adapted = self.adapt(task.support_x, task.support_y, self.inner_steps)
            query_predictions = adapted(task.query_x)
            total = total + self.task_loss(query_predictions, task.query_y)
            predictions.append(query_predictions)
        return total / batch.num_tasks, torch.stack(predictions)

    def adapt_and_predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        # Lightning evaluates without gradients; adaptation needs them.
        with torch.enable_grad():
            learner_mode = self.learner.training
            self.learner.train(self.transductive_bn)
            # first_order: the same adapted weights, without keeping a graph nobody will use
            adapted = self.adapt(support_x, support_y, self.test_inner_steps, first_order=True)
            predictions = adapted(query_x).detach()
            self.learner.train(learner_mode)
        return predictions
