"""The LSTM meta-learner: its preprocessing, its update against the paper's equations written out by
hand, constant gradient inputs, batch statistics at test time, training, and Omniglot."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metalearn.algorithms.meta_lstm import MetaLearnerState, MetaLSTM
from metalearn.data.episodes import Task, TaskBatch
from metalearn.models.backbones import Conv4
from metalearn.models.gradient_preprocessing import preprocess
from metalearn.run.training import train
from tests.budgets import BUDGETS
from tests.conftest import make_config
from tests.helpers import make_batch, relative_error

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(inner_steps: int = 3) -> MetaLSTM:
    torch.manual_seed(0)
    backbone = Conv4((1, 8, 8), hidden_channels=4, num_blocks=2)
    model = MetaLSTM(backbone, inner_steps=inner_steps, test_inner_steps=inner_steps,
                     hidden_size=5, output_dim=3)
    return model.double().train()


def hand_update(model: MetaLSTM, theta, gradient, loss, state: MetaLearnerState):
    """Section 3.2 written out: layer 1 on the preprocessed gradient and loss, then
    f = sigmoid(W_f . [h, theta, f_prev] + b_f), i likewise, theta' = f * theta - i * gradient."""
    size = model.gradient_lstm.hidden_size
    features = torch.cat([preprocess(gradient), preprocess(loss).expand(len(gradient), 2)], dim=1)
    hidden, cell = model.gradient_lstm(features, (state.hidden, state.cell))
    w_f, w_i = model.forget_weight, model.input_weight
    forget = torch.sigmoid(hidden @ w_f[:size] + w_f[size] * theta
                           + w_f[size + 1] * state.forget + model.forget_bias)
    input_ = torch.sigmoid(hidden @ w_i[:size] + w_i[size] * theta
                           + w_i[size + 1] * state.input + model.input_bias)
    return forget * theta - input_ * gradient, MetaLearnerState(hidden, cell, forget, input_)


def reference_theta(model: MetaLSTM, task: Task, steps: int, gradient_graph: bool = False):
    """theta_T by hand_update. gradient_graph=True keeps the gradient and loss differentiable
    (the 'gradients of the gradient' the paper ignores), to show the difference is measurable."""
    theta = model.initial_theta
    state = model.initial_state(theta)
    for _ in range(steps):
        at = theta if gradient_graph else theta.detach().requires_grad_()
        loss = F.cross_entropy(model.learner_forward(at, task.support_x), task.support_y)
        (gradient,) = torch.autograd.grad(loss, at, create_graph=gradient_graph)
        theta, state = hand_update(model, theta, gradient, loss if gradient_graph else loss.detach(),
                                   state)
    return theta


def meta_gradient(model: MetaLSTM, batch: TaskBatch, gradient_graph: bool) -> torch.Tensor:
    loss = sum(
        F.cross_entropy(model.learner_forward(
            reference_theta(model, task, model.inner_steps, gradient_graph), task.query_x),
            task.query_y)
        for task in batch.tasks()
    ) / batch.batch_size
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def test_preprocessing_of_known_numbers():
    big, small = math.exp(-5), 2e-5  # e^-10 = 4.54e-5 separates the two branches at p = 10
    x = torch.tensor([1.0, -big, small, -small, 0.0], dtype=torch.double)
    expected = torch.tensor([
        [0.0, 1.0],                        # log(1) / 10, sign
        [-0.5, -1.0],                      # log(e^-5) / 10, sign
        [-1.0, math.exp(10) * small],      # below e^-10: -1, e^10 x
        [-1.0, -math.exp(10) * small],
        [-1.0, 0.0],
    ], dtype=torch.double)
    assert torch.allclose(preprocess(x), expected, atol=1e-12)
    assert torch.allclose(preprocess(torch.tensor([0.5]), p=2.0),
                          torch.tensor([[math.log(0.5) / 2, 1.0]]))


def test_meta_update_matches_the_equations():
    model = make_model()
    with torch.no_grad():  # weights of order 1, so a misplaced input changes the result
        for weight in (model.forget_weight, model.input_weight, model.forget_bias,
                       model.input_bias):
            weight.normal_()
    n, size = model.initial_theta.numel(), model.gradient_lstm.hidden_size
    generator = torch.Generator().manual_seed(2)
    theta, gradient = torch.randn(2, n, generator=generator, dtype=torch.double)
    state = MetaLearnerState(
        torch.randn(n, size, generator=generator, dtype=torch.double),
        torch.randn(n, size, generator=generator, dtype=torch.double),
        torch.rand(n, generator=generator, dtype=torch.double),
        torch.rand(n, generator=generator, dtype=torch.double),
    )
    loss = torch.tensor(1.3, dtype=torch.double)

    theta_new, new_state = model.meta_update(theta, gradient, loss, state)
    expected_theta, expected_state = hand_update(model, theta, gradient, loss, state)
    assert torch.allclose(theta_new, expected_theta, rtol=1e-12, atol=1e-12)
    for got, expected in zip(new_state, expected_state):
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_meta_gradient_treats_support_gradients_as_constants():
    model, batch = make_model(), make_batch("classification")
    loss, _ = model.meta_train_loss(batch)
    got = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])
    assert relative_error(got, meta_gradient(model, batch, gradient_graph=False)) < 1e-8
    # the gradients of the gradient would change it measurably, so the check above can fail
    assert relative_error(got, meta_gradient(model, batch, gradient_graph=True)) > 1e-3


def test_evaluation_adapts_with_test_inner_steps_and_returns_constants():
    model = make_model(inner_steps=1)
    model.test_inner_steps = 3
    task = make_batch("classification").task(0)
    expected = model.learner_forward(reference_theta(model, task, 3), task.query_x)
    with torch.no_grad():  # as Lightning evaluates
        predictions = model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
    assert not predictions.requires_grad
    assert torch.allclose(predictions, expected, rtol=1e-10, atol=1e-12)


def test_batchnorm_uses_batch_statistics_at_test_time():
    model, task = make_model(), make_batch("classification").task(0)
    assert list(model.learner.buffers()) == []  # no running averages to fall back on
    with torch.no_grad():
        in_training = model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
        model.eval()
        in_eval = model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
        # batch statistics: the same query scored within another batch scores differently
        first = model.learner_forward(model.initial_theta, task.query_x)[:3]
        alone = model.learner_forward(model.initial_theta, task.query_x[:3])
    assert torch.equal(in_training, in_eval)
    assert not torch.allclose(first, alone)


def test_a_training_step_moves_c0_and_every_meta_learner_weight():
    model, batch = make_model(), make_batch("classification")
    optimizer = model.configure_optimizers()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert {"initial_theta", "forget_weight", "input_weight", "forget_bias", "input_bias",
            "gradient_lstm.weight_ih", "gradient_lstm.weight_hh"} <= before.keys()
    loss, _ = model.meta_train_loss(batch)
    loss.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        assert not torch.equal(parameter.detach(), before[name]), name


@pytest.mark.slow
def test_meta_lstm_learns_omniglot_one_shot(tmp_path):
    budget = BUDGETS["meta_lstm (omniglot)"]
    budget.check(train(make_config(budget.overrides, tmp_path)))
