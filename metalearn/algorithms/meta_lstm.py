"""The LSTM meta-learner (Ravi and Larochelle, ICLR 2017, "Optimization as a Model for Few-Shot
Learning").

Algorithm 1 and section 3 of the paper: the learner's parameters theta are the cell state of an
LSTM, so one step of the meta-learner is a learned gradient step,

    f_t = sigmoid(W_f . [h_t, theta_{t-1}, f_{t-1}] + b_f)     (how much of theta to keep)
    i_t = sigmoid(W_i . [h_t, theta_{t-1}, i_{t-1}] + b_i)     (a learning rate per coordinate)
    theta_t = f_t * theta_{t-1} - i_t * grad_t,

with one set of weights shared by every coordinate of theta. h_t comes from a first, ordinary LSTM
layer that reads each coordinate's gradient and the loss, preprocessed as in Andrychowicz et al.
2016. The initial cell state c_0 = theta_0 is learned: it is the learner's initialisation. For a
task, `inner_steps` such steps on the support set take theta_0 to theta_T; the query loss at
theta_T trains the meta-learner and c_0 (Adam, `outer_lr`; the paper clips the gradient norm at
0.25, which is the trainer's `gradient_clip_val`). Evaluation takes `test_inner_steps` steps.

As in the paper: the gradient and loss fed to the meta-learner are constants ("we ignore the
gradients of the gradient", section 3.2), so the meta-gradient flows through theta_{t-1} in the
update but not through the support loss's derivatives; BatchNorm always normalises with the
batch's statistics, at test time too, and keeps no running averages (`transductive_bn=false`
keeps them and predicts with them at test time instead); b_f starts large and b_i
small (the authors' code: U[4, 5] and U[-5, -4]), so training starts as plain SGD with a rate near
0.01. What we changed, and why: every inner step uses the whole support set (the authors' 1-shot
configs did the same; with more shots they iterated over minibatches), which keeps one step one
gradient; the fed-back f_{t-1}, i_{t-1} are the gate values of the equations above (the authors'
code fed back the pre-sigmoid values); tasks may be batched (`meta_batch_size`; Algorithm 1 takes
one per update). The learner is whatever backbone the config gives; the paper's, Conv4 with 32
filters, is what configs/experiment/meta_lstm_omniglot.yaml selects.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalearn.algorithms.gradient import GradientModule
from metalearn.data.episodes import TaskBatch
from metalearn.models.gradient_preprocessing import preprocess


def use_batch_statistics(module: nn.Module) -> None:
    """Makes every BatchNorm in `module` normalise with the current batch's statistics, in eval
    mode too (Lightning evaluates in eval mode), by removing its running averages."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.track_running_stats = False
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                layer.register_buffer(name, None)


class MetaLearnerState(NamedTuple):
    """Per-coordinate state between inner steps: the first layer's LSTM state [n, hidden] and the
    second layer's previous forget and input gates [n]."""

    hidden: Tensor
    cell: Tensor
    forget: Tensor
    input: Tensor


class MetaLSTM(GradientModule):
    """Args (besides GradientModule's; `transductive_bn` defaults to the paper's batch statistics
    and removes the running averages, false keeps them for prediction at test time):
        hidden_size: units of the first LSTM layer, shared by every coordinate (paper: 20).
        preprocess_p: p of the gradient and loss preprocessing of Andrychowicz et al. 2016.
    """

    supported_task_types = ("classification",)

    def __init__(self, backbone: nn.Module, hidden_size: int = 20, preprocess_p: float = 10.0,
                 inner_steps: int = 15, test_inner_steps: int = 15, **gradient_args):
        super().__init__(backbone, inner_steps=inner_steps, test_inner_steps=test_inner_steps,
                         **gradient_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.preprocess_p = preprocess_p
        if self.transductive_bn:
            use_batch_statistics(self.learner)
        named = list(self.learner.named_parameters())
        self.param_names = [name for name, _ in named]
        self.param_shapes = [p.shape for _, p in named]
        # c_0 = theta_0, initialised from the learner's own initialisation
        self.initial_theta = nn.Parameter(torch.cat([p.detach().flatten() for _, p in named]))
        # theta lives in c_0 and the inner loop only: the learner keeps its structure, no weights
        # (functional_call supplies them), so nothing is stored or optimised twice (its layers
        # print as bias=False for that reason)
        for name in self.param_names:
            owner, _, attribute = name.rpartition(".")
            self.learner.get_submodule(owner).register_parameter(attribute, None)

        # layer 1: an ordinary LSTM over [preprocessed gradient, preprocessed loss]
        self.gradient_lstm = nn.LSTMCell(4, hidden_size)
        # layer 2: weights over [h_t, theta_{t-1}, previous gate]; the reference code's init
        self.forget_weight = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        self.input_weight = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        # f_t near 1 and i_t near 0.01 at first: plain SGD with a small learning rate
        self.forget_bias = nn.Parameter(torch.empty(()).uniform_(4.0, 5.0))
        self.input_bias = nn.Parameter(torch.empty(()).uniform_(-5.0, -4.0))

    # The learner ----------------------------------------------------------------------------
    def learner_forward(self, theta: Tensor, x: Tensor) -> Tensor:
        views = theta.split([shape.numel() for shape in self.param_shapes])
        params = {name: view.view(shape)
                  for name, view, shape in zip(self.param_names, views, self.param_shapes)}
        return functional_call(self.learner, params, (x,))

    def support_loss_and_gradient(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The learner's loss on (x, y) at theta and its gradient, as constants: computed on a
        detached copy, so the meta-gradient does not flow through them (section 3.2)."""
        with torch.enable_grad():  # also under Lightning's no_grad evaluation
            theta = theta.detach().requires_grad_()
            loss = self.task_loss(self.learner_forward(theta, x), y)
            (gradient,) = torch.autograd.grad(loss, theta)
        return loss.detach(), gradient

    # The meta-learner -----------------------------------------------------------------------
    def initial_state(self, theta: Tensor) -> MetaLearnerState:
        hidden = theta.new_zeros(theta.numel(), self.gradient_lstm.hidden_size)
        return MetaLearnerState(hidden, hidden, theta.new_zeros(theta.shape),
                                theta.new_zeros(theta.shape))

    def meta_update(self, theta: Tensor, gradient: Tensor, loss: Tensor,
                    state: MetaLearnerState) -> tuple[Tensor, MetaLearnerState]:
        """One step of the two-layer meta-learner: theta_t = f_t * theta_{t-1} - i_t * grad_t."""
        inputs = torch.cat([preprocess(gradient, self.preprocess_p),
                            preprocess(loss.expand_as(gradient), self.preprocess_p)], dim=-1)
        hidden, cell = self.gradient_lstm(inputs, (state.hidden, state.cell))
        column = theta.unsqueeze(-1)
        forget = torch.sigmoid(torch.cat([hidden, column, state.forget.unsqueeze(-1)], dim=-1)
                               @ self.forget_weight + self.forget_bias)
        input_ = torch.sigmoid(torch.cat([hidden, column, state.input.unsqueeze(-1)], dim=-1)
                               @ self.input_weight + self.input_bias)
        return forget * theta - input_ * gradient, MetaLearnerState(hidden, cell, forget, input_)

    def inner_loop(self, support_x: Tensor, support_y: Tensor, steps: int) -> Tensor:
        """theta_T after `steps` meta-learner steps on the whole support set, from c_0. In float32
        under mixed precision too: a 16-bit forget gate near 1 would round away the updates."""
        theta = self.initial_theta
        state = self.initial_state(theta)
        with torch.autocast(support_x.device.type, enabled=False):
            for _ in range(steps):
                loss, gradient = self.support_loss_and_gradient(theta, support_x, support_y)
                theta, state = self.meta_update(theta, gradient, loss, state)
        return theta

    # GradientModule ---------------------------------------------------------------------------
    def meta_train_loss(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        predictions = [
            self.learner_forward(self.inner_loop(task.support_x, task.support_y, self.inner_steps),
                                 task.query_x)
            for task in batch.tasks()
        ]
        losses = [self.task_loss(p, y) for p, y in zip(predictions, batch.query_y)]
        return torch.stack(losses).mean(), torch.stack(predictions)

    def adapt_weights(self, support_x: Tensor, support_y: Tensor, steps: int) -> Tensor:
        # no graph through the meta-learner: only the support gradients need autograd
        with torch.no_grad():
            return self.inner_loop(support_x, support_y, steps)

    def predict_adapted(self, adapted: Tensor, query_x: Tensor) -> Tensor:
        return self.learner_forward(adapted, query_x)
