"""Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, ICML 2017), through learn2learn's `MAML`.

Algorithm 2 of the paper: for each task of a meta-batch, take `inner_steps` SGD steps of size
`inner_lr` on the support loss from the shared initialisation, evaluate the adapted weights on the
query set, and update the initialisation with the outer optimiser (Adam, `outer_lr`) on the mean
query loss, differentiating through the inner steps (second order) unless `first_order=True`.
Evaluation adapts with `test_inner_steps` steps (the paper used 10 at test time, against 1 to 5
in training).

The learner is the backbone followed by a linear head of `output_dim` units; subclasses change
what is adapted (`split_model`: ANIL adapts the head only) and how (`wrap`: Meta-SGD). BatchNorm: with
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
        head = nn.Linear(backbone.out_features, self.output_dim)
        self.body, adapted_part = self.split_model(backbone, head)
        self.learner = self.wrap(adapted_part)

    def split_model(self, backbone: nn.Module, head: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(body, learner): the body is shared by all tasks and changes only in the outer loop;
        the learner is adapted in the inner loop. MAML adapts the whole network."""
        return nn.Identity(), nn.Sequential(backbone, head)

    def wrap(self, model: nn.Module) -> l2l.algorithms.BaseLearner:
        """The learn2learn wrapper that clones and adapts the learner."""
        hparams = self.hparams
        return l2l.algorithms.MAML(
            model, lr=hparams.inner_lr, first_order=hparams.first_order,
            allow_unused=hparams.allow_unused, allow_nograd=hparams.allow_nograd,
        )

    def task_predictions(self, task: Episode, steps: int, first_order: bool | None = None) -> Tensor:
        """Adapts to the task's support set in `steps` steps and predicts its queries."""
        n_support = task.support_x.shape[0]
        features = self.body(torch.cat([task.support_x, task.query_x]))
        adapted = inner_loop(self.learner, features[:n_support], task.support_y, steps,
                             self.task_loss, first_order)
        return adapted(features[n_support:])

    def meta_train_loss(self, batch: Episode) -> tuple[Tensor, Tensor]:
        predictions = [self.task_predictions(batch.task(t), self.inner_steps)
                       for t in range(batch.num_tasks)]
        losses = [self.task_loss(p, y) for p, y in zip(predictions, batch.query_y)]
        return torch.stack(losses).mean(), torch.stack(predictions)

    def adapt_and_predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        task = Episode(support_x, support_y, query_x, None)
        modes = [module.training for module in (self.body, self.learner)]
        # Lightning evaluates without gradients; adaptation needs them.
        with torch.enable_grad():
            self.body.train(self.transductive_bn)
            self.learner.train(self.transductive_bn)
            # first_order: the same adapted weights, without keeping a graph nobody will use
            predictions = self.task_predictions(task, self.test_inner_steps, first_order=True)
        self.body.train(modes[0])
        self.learner.train(modes[1])
        return predictions.detach()
