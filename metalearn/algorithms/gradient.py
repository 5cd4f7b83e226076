"""The base of the algorithms that adapt by gradient steps on the support set: MAML, FOMAML,
Meta-SGD, ANIL, Reptile and the LSTM meta-learner.

What they share: a learner network (the backbone with a linear output layer, or a user's whole
network with `output_layer=False`), `inner_steps` in meta-training and `test_inner_steps` when
adapting at validation and test time, and the BatchNorm convention of adaptation
(`transductive_bn`). Each implements how it adapts (`adapt_weights`) and how the adapted weights
predict (`predict_adapted`); `adapt` puts the two together for evaluation and the Python API.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from metalearn.algorithms.base import EpisodicModule, Predictor
from metalearn.errors import UserError


class GradientModule(EpisodicModule):
    """Args:
        backbone: the network the learner is built on.
        inner_steps: adaptation steps per task during meta-training.
        test_inner_steps: adaptation steps when adapting at validation and test time (and the
            Python API's default).
        transductive_bn: BatchNorm normalises with the statistics of the task's own batch when
            adapting and predicting at test time, as during meta-training (the convention of the
            original MAML code); False uses the running averages collected in meta-training.
        output_layer: a linear layer of one unit per class (or per regression target) after the
            backbone; False makes the backbone the whole learner (a user's network).
    """

    supported_task_types = ("classification", "regression")
    user_network_is_learner = True
    adapts_by_steps = True

    def __init__(self, backbone: nn.Module, inner_steps: int = 1, test_inner_steps: int = 3,
                 transductive_bn: bool = True, output_layer: bool = True, **base_args):
        super().__init__(**base_args)
        self.inner_steps, self.test_inner_steps = inner_steps, test_inner_steps
        self.transductive_bn = transductive_bn
        self.learner = self.build_learner(backbone, output_layer)

    def build_learner(self, backbone: nn.Module, output_layer: bool) -> nn.Module:
        """The network adapted in the inner loop: the backbone and a linear output layer of one
        unit per class (or regression target), or, with `output_layer=False`, the backbone alone
        (a user's whole network), which must then have that many outputs."""
        if output_layer:
            return nn.Sequential(backbone, nn.Linear(backbone.out_features, self.output_dim))
        if backbone.out_features != self.output_dim:
            raise UserError(
                f"with algorithm.output_layer=false the network itself is the learner and must "
                f"output {self.output_dim} values per example (one per class, or the regression "
                f"target); it outputs {backbone.out_features}. End it with a layer of "
                f"{self.output_dim} units, or set output_layer=true to add one")
        return backbone

    # What a gradient-based algorithm implements ----------------------------------------------
    @abstractmethod
    def adapt_weights(self, support_x: Tensor, support_y: Tensor, steps: int) -> Any:
        """The learner adapted to a support set in `steps` steps, in whatever form
        `predict_adapted` takes (a cloned network, a copy, a weight vector)."""

    @abstractmethod
    def predict_adapted(self, adapted: Any, query_x: Tensor) -> Tensor:
        """Query predictions of the adapted learner."""

    # Shared ------------------------------------------------------------------------------------
    @contextmanager
    def adaptation_mode(self) -> Iterator[None]:
        """BatchNorm on each batch's own statistics (transductive) or on the running averages,
        whatever mode the module is in; then the mode it was in."""
        was_training = self.training
        self.train(self.transductive_bn)
        try:
            yield
        finally:
            self.train(was_training)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        steps = self.test_inner_steps if steps is None else steps
        # Lightning evaluates without gradients; adaptation takes them
        with self.adaptation_mode(), torch.enable_grad():
            adapted = self.adapt_weights(support_x, support_y, steps)

        def predict(query_x: Tensor) -> Tensor:
            with self.adaptation_mode(), torch.no_grad():
                return self.predict_adapted(adapted, query_x)

        return predict
