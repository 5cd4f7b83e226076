"""Meta-SGD (Li, Zhou, Chen and Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning"), through learn2learn's `MetaSGD`.

MAML whose inner step uses a learned learning rate for every parameter coordinate:
theta' = theta - alpha (elementwise) grad L_support(theta) (equation 3). alpha has the shape of
theta, starts at `inner_lr` everywhere, and is meta-learned with theta on the query loss by the
same outer optimiser (Algorithm 1).

learn2learn's `MetaSGD` has no `allow_unused` / `allow_nograd`; `MetaSGDLearner` adds them with
the meaning they have in its `MAML`, so every MAML-family setting applies here too.
"""

from __future__ import annotations

import learn2learn as l2l
from learn2learn.algorithms.meta_sgd import meta_sgd_update
from learn2learn.utils import clone_module, clone_parameters
from torch import Tensor, autograd, nn

from metalearn.algorithms.functional import UpdateRule, sgd
from metalearn.algorithms.maml import MAML


class MetaSGDLearner(l2l.algorithms.MetaSGD):
    """learn2learn's MetaSGD, whose `adapt` can skip parameters the loss does not use
    (`allow_unused`) or that do not require gradients (`allow_nograd`): they keep their values."""

    def __init__(self, model: nn.Module, lr: float = 1.0, first_order: bool = False,
                 allow_unused: bool | None = None, allow_nograd: bool = False,
                 lrs: nn.ParameterList | None = None):
        super().__init__(model, lr=lr, first_order=first_order, lrs=lrs)
        self.allow_unused, self.allow_nograd = allow_unused, allow_nograd

    def clone(self) -> MetaSGDLearner:
        return MetaSGDLearner(clone_module(self.module), first_order=self.first_order,
                              allow_unused=self.allow_unused, allow_nograd=self.allow_nograd,
                              lrs=clone_parameters(self.lrs))

    def adapt(self, loss: Tensor, first_order: bool | None = None) -> None:
        second_order = not (self.first_order if first_order is None else first_order)
        parameters = list(self.module.parameters())
        adapted = [p.requires_grad or not self.allow_nograd for p in parameters]
        gradients = iter(autograd.grad(
            loss, [p for p, a in zip(parameters, adapted) if a], retain_graph=second_order,
            create_graph=second_order, allow_unused=bool(self.allow_unused)))
        # a None gradient leaves its parameter as it is
        self.module = meta_sgd_update(self.module, self.lrs,
                                      [next(gradients) if a else None for a in adapted])


class MetaSGD(MAML):
    def __init__(self, backbone: nn.Module, test_inner_steps: int = 1, **maml_args):
        # one step at test time, as in training: the learned rates are tuned for that step
        super().__init__(backbone, test_inner_steps=test_inner_steps, **maml_args)

    def update_rule(self) -> UpdateRule:
        """The batched backend's inner step: each coordinate's own learned rate."""
        names = [name for name, _ in self.learner.module.named_parameters()]
        return sgd(dict(zip(names, self.learner.lrs)))

    def wrap(self, model: nn.Module) -> MetaSGDLearner:
        hparams = self.hparams
        return MetaSGDLearner(model, lr=hparams.inner_lr, first_order=hparams.first_order,
                              allow_unused=hparams.allow_unused, allow_nograd=hparams.allow_nograd)
