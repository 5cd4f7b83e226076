"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio and Vinyals, ICLR 2020).

MAML that adapts only the network's head in the inner loop: the body (the backbone) is shared by
all tasks and is updated only by the outer loop (section 4, "ANIL"). The paper finds this matches
MAML's accuracy, since MAML's gains come from feature reuse rather than rapid learning. Support and
query go through the body in separate passes, as they go through MAML's learner, so an adapted
model can predict any later batch.
"""

from __future__ import annotations

from torch import nn

from metalearn.algorithms.maml import MAML
from metalearn.errors import UserError


class ANIL(MAML):
    user_network_is_learner = False  # the network is the body; ANIL adapts the layer it adds

    def build_learner(self, backbone: nn.Module, output_layer: bool) -> nn.Module:
        """The head, a linear layer on the body's features; the backbone becomes the body."""
        if not output_layer:
            raise UserError("anil adapts only the output layer it adds to the backbone, so "
                            "algorithm.output_layer must be true")
        self.body = backbone
        return nn.Linear(backbone.out_features, self.output_dim)

    def body_network(self) -> nn.Module:
        return self.body
