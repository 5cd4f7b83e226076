"""MAML's meta-gradient against an explicit, hand-written second-order inner loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalearn.algorithms.maml import MAML
from metalearn.data.episodes import TaskBatch
from metalearn.models.backbones import MLP, Conv4
from tests.helpers import make_batch, plain_sgd, relative_error

INNER_LR, INNER_STEPS = 0.3, 2


def make_maml(first_order: bool, task_type: str = "classification") -> MAML:
    torch.manual_seed(0)
    if task_type == "classification":
        backbone = Conv4((1, 8, 8), hidden_channels=4, num_blocks=2)
    else:
        backbone = MLP((1,), hidden_sizes=(8, 8))
    model = MAML(backbone, inner_lr=INNER_LR, inner_steps=INNER_STEPS, first_order=first_order,
                 task_type=task_type, output_dim=3 if task_type == "classification" else 1)
    return model.double().train()


def reference_meta_gradient(model: MAML, batch: TaskBatch, loss_fn) -> list[torch.Tensor]:
    """Explicit inner loop: phi <- phi - lr * grad(support loss), keeping the graph."""
    network = model.learner.module
    params = dict(network.named_parameters())
    outer = 0.0
    for t in range(batch.batch_size):
        task = batch.task(t)
        fast = dict(params)
        for _ in range(INNER_STEPS):
            loss = loss_fn(functional_call(network, fast, (task.support_x,)), task.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {name: w - INNER_LR * g for (name, w), g in zip(fast.items(), grads)}
        outer = outer + loss_fn(functional_call(network, fast, (task.query_x,)), task.query_y)
    return list(torch.autograd.grad(outer / batch.batch_size, list(params.values())))


def model_meta_gradient(model: MAML, batch: TaskBatch) -> list[torch.Tensor]:
    loss, _ = model.meta_train_loss(batch)
    return list(torch.autograd.grad(loss, list(model.learner.module.parameters())))


def test_second_order_meta_gradient_matches_hand_written_loop():
    for task_type, loss_fn in (("classification", F.cross_entropy), ("regression", F.mse_loss)):
        model, batch = make_maml(False, task_type), make_batch(task_type)
        expected = reference_meta_gradient(model, batch, loss_fn)
        assert relative_error(model_meta_gradient(model, batch), expected) < 1e-5, task_type


def test_first_order_gives_a_measurably_different_gradient():
    batch = make_batch("classification")
    second = model_meta_gradient(make_maml(False), batch)
    first = model_meta_gradient(make_maml(True), batch)
    assert relative_error(first, second) > 1e-3


def test_evaluation_adapts_with_test_inner_steps_and_leaves_weights_alone():
    model = make_maml(False, "regression")
    model.test_inner_steps = 5
    task = make_batch("regression").task(0)
    network = model.learner.module
    fast = plain_sgd(network, task.support_x, task.support_y, 5, F.mse_loss, INNER_LR)
    expected = functional_call(network, fast, (task.query_x,))

    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():  # as Lightning evaluates
        adapted = model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
    assert not adapted.requires_grad
    assert torch.allclose(adapted, expected, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
