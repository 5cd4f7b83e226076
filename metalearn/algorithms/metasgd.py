"""Meta-SGD (Li, Zhou, Chen and Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning"), through learn2learn's `MetaSGD`.

MAML whose inner step uses a learned learning rate for every parameter coordinate:
theta' = theta - alpha (elementwise) grad L_support(theta) (equation 3). alpha has the shape of
theta, starts at `inner_lr` everywhere, and is meta-learned with theta on the query loss by the
same outer optimiser (Algorithm 1).
"""

from __future__ import annotations

import learn2learn as l2l
from torch import nn

from metalearn.algorithms.maml import MAML


class MetaSGD(MAML):
    def wrap(self, model: nn.Module) -> l2l.algorithms.MetaSGD:
        return l2l.algorithms.MetaSGD(model, lr=self.hparams.inner_lr,
                                      first_order=self.hparams.first_order)
