"""Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, ICML 2017), through learn2learn's `MAML`.

Algorithm 2 of the paper: for each task of a meta-batch, take `inner_steps` SGD steps of size
`inner_lr` on the support loss from the shared initialisation, evaluate the adapted weights on the
query set, and update the initialisation with the outer optimiser (Adam, `outer_lr`) on the mean
query loss, differentiating through the inner steps (second order) unless `first_order=True`.
Evaluation adapts with `test_inner_steps` steps (the paper used 10 at test time, against 1 to 5
in training).

The learner is the backbone followed by a linear output layer of `output_dim` units, or the
backbone alone with `output_layer=False` (a user's whole network, through the Python API);
subclasses change what is adapted (`split_model`: ANIL adapts the output layer only) and how
(`wrap`: Meta-SGD). BatchNorm: with `transductive_bn=True` (the default, and the convention of
the original MAML code) adaptation and prediction at test time use the statistics of the task's
own batch (support, then query), as during meta-training; with False they use the running averages
collected during meta-training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import learn2learn as l2l
import torch
from torch import Tensor, nn

from metalearn.algorithms.base import EpisodicModule
from metalearn.data.episodes import Episode
from metalearn.models.backbones import learner_network


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


class MAML(EpisodicModule):
    supported_task_types = ("classification", "regression")
    user_network_is_learner = True

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
        output_layer: bool = True,
        **base_args,
    ):
        super().__init__(**base_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.inner_steps, self.test_inner_steps = inner_steps, test_inner_steps
        self.transductive_bn = transductive_bn
        self.body, adapted_part = self.split_model(backbone, output_layer)
        self.learner = self.wrap(adapted_part)

    def split_model(self, backbone: nn.Module, output_layer: bool) -> tuple[nn.Module, nn.Module]:
        """(body, learner): the body is shared by all tasks and changes only in the outer loop;
        the learner is adapted in the inner loop. MAML adapts the whole network."""
        return nn.Identity(), learner_network(backbone, self.output_dim, output_layer)

    def wrap(self, model: nn.Module) -> l2l.algorithms.BaseLearner:
        """The learn2learn wrapper that clones and adapts the learner."""
        hparams = self.hparams
        return l2l.algorithms.MAML(
            model, lr=hparams.inner_lr, first_order=hparams.first_order,
            allow_unused=hparams.allow_unused, allow_nograd=hparams.allow_nograd,
        )

    def task_predictions(self, task: Episode, steps: int) -> Tensor:
        """Adapts to the task's support set in `steps` steps and predicts its queries."""
        adapted = inner_loop(self.learner, self.body(task.support_x), task.support_y, steps,
                             self.task_loss)
        return adapted(self.body(task.query_x))

    def meta_train_loss(self, batch: Episode) -> tuple[Tensor, Tensor]:
        predictions = [self.task_predictions(batch.task(t), self.inner_steps)
                       for t in range(batch.num_tasks)]
        losses = [self.task_loss(p, y) for p, y in zip(predictions, batch.query_y)]
        return torch.stack(losses).mean(), torch.stack(predictions)

    @contextmanager
    def adaptation_mode(self) -> Iterator[None]:
        """BatchNorm on each batch's own statistics (transductive) or on the running averages."""
        modes = [module.training for module in (self.body, self.learner)]
        self.body.train(self.transductive_bn)
        self.learner.train(self.transductive_bn)
        try:
            yield
        finally:
            self.body.train(modes[0])
            self.learner.train(modes[1])

    def adapt(self, support_x: Tensor, support_y: Tensor,
              steps: int | None = None) -> Callable[[Tensor], Tensor]:
        steps = self.test_inner_steps if steps is None else steps
        # Lightning evaluates without gradients; adaptation needs them. first_order: the same
        # adapted weights, without keeping a graph nobody will use.
        with self.adaptation_mode(), torch.enable_grad():
            adapted = inner_loop(self.learner, self.body(support_x), support_y, steps,
                                 self.task_loss, first_order=True)

        def predict(query_x: Tensor) -> Tensor:
            with self.adaptation_mode():
                return adapted(self.body(query_x)).detach()

        return predict

    def adapt_and_predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return self.adapt(support_x, support_y)(query_x)
