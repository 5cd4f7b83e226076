"""FOMAML, Meta-SGD and ANIL against hand-written references (and Meta-SGD against learn2learn's
MAML) on tiny models and fixed data."""

from __future__ import annotations

import copy

import learn2learn as l2l
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metalearn.algorithms.anil import ANIL
from metalearn.algorithms.fomaml import FOMAML
from metalearn.algorithms.maml import inner_loop
from metalearn.algorithms.metasgd import MetaSGD, MetaSGDLearner
from metalearn.data.episodes import TaskBatch
from metalearn.models.backbones import MLP
from tests.helpers import flat, make_batch, plain_sgd, relative_error
from tests.test_maml_gradient import model_meta_gradient

INNER_LR = 0.3


def tiny(cls, **kwargs):
    torch.manual_seed(0)
    model = cls(MLP((1,), hidden_sizes=(8, 8)), inner_lr=INNER_LR, task_type="regression",
                output_dim=1, **kwargs)
    return model.double().train()


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_weights():
    model, batch = tiny(FOMAML, inner_steps=2), make_batch("regression")
    network = model.learner.module
    expected = [torch.zeros_like(p) for p in network.parameters()]
    for t in range(batch.batch_size):
        task = batch.task(t)
        fast = plain_sgd(network, task.support_x, task.support_y, 2, F.mse_loss, INNER_LR)
        fast = {name: w.requires_grad_() for name, w in fast.items()}
        query_loss = F.mse_loss(functional_call(network, fast, (task.query_x,)), task.query_y)
        for total, g in zip(expected, torch.autograd.grad(query_loss, list(fast.values()))):
            total += g / batch.batch_size
    assert relative_error(model_meta_gradient(model, batch), expected) < 1e-10


def test_metasgd_applies_a_learned_rate_per_coordinate():
    model, task = tiny(MetaSGD), make_batch("regression").task(0)
    random_rates(model)
    network = model.learner.module
    loss = F.mse_loss(network(task.support_x), task.support_y)
    grads = torch.autograd.grad(loss, list(network.parameters()))
    expected = [w - rate * g for w, rate, g in zip(network.parameters(), model.learner.lrs, grads)]
    adapted = inner_loop(model.learner, task.support_x, task.support_y, 1, F.mse_loss)
    for got, want in zip(adapted.module.parameters(), expected):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_metasgd_rates_are_meta_learned():
    model, batch = tiny(MetaSGD, inner_steps=1), make_batch("regression")
    before = [rate.detach().clone() for rate in model.learner.lrs]
    assert all(torch.allclose(rate, torch.full_like(rate, INNER_LR)) for rate in before)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss, _ = model.meta_train_loss(batch)
    loss.backward()
    optimizer.step()
    changed = [not torch.equal(a, b) for a, b in zip(before, model.learner.lrs)]
    assert all(changed)
    # each coordinate has its own rate: after a step they are no longer all equal
    assert model.learner.lrs[0].unique().numel() > 1


def random_rates(model: MetaSGD, seed: int = 3) -> None:
    """Rates of order INNER_LR that differ by coordinate, so that a rate used at the wrong place
    changes the result."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rate in model.learner.lrs:
            rate.copy_(2 * INNER_LR * torch.rand(rate.shape, generator=generator,
                                                 dtype=rate.dtype))


def test_metasgd_meta_gradient_matches_a_hand_written_loop():
    """theta' = theta - alpha * grad (two steps, second order), the query loss at theta', and its
    gradient with respect to both theta and the rates alpha, written out with functional_call."""
    model, batch = tiny(MetaSGD, inner_steps=2), make_batch("regression")
    random_rates(model)
    network, rates = model.learner.module, list(model.learner.lrs)
    theta = dict(network.named_parameters())
    outer = 0.0
    for task in batch.tasks():
        fast = dict(theta)
        for _ in range(2):
            loss = F.mse_loss(functional_call(network, fast, (task.support_x,)), task.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {name: w - rate * g
                    for (name, w), rate, g in zip(fast.items(), rates, grads)}
        outer = outer + F.mse_loss(functional_call(network, fast, (task.query_x,)), task.query_y)
    wrt = list(theta.values()) + rates
    expected = torch.autograd.grad(outer / batch.batch_size, wrt)
    loss, _ = model.meta_train_loss(batch)
    got = torch.autograd.grad(loss, wrt)
    assert relative_error(got[len(theta):], expected[len(theta):]) < 1e-10  # the rates'
    assert relative_error(got, expected) < 1e-10
    # the rates' gradient is not negligible: the check above can fail
    assert flat(expected[len(theta):]).norm() > 1e-3 * flat(expected).norm()


class PartlyFrozen(nn.Module):
    """A learner with a frozen first layer and a parameter its forward never uses."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(1, 8), nn.Linear(8, 1)
        self.first.requires_grad_(False)
        self.unused = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


def test_metasgd_skips_frozen_and_unused_parameters_as_learn2learn_maml_does():
    task = make_batch("regression").task(0)
    torch.manual_seed(0)
    network = PartlyFrozen().double()
    flags = {"allow_unused": True, "allow_nograd": True}
    metasgd = MetaSGDLearner(copy.deepcopy(network), lr=INNER_LR, **flags)
    maml = l2l.algorithms.MAML(copy.deepcopy(network), lr=INNER_LR, **flags)
    # with every rate equal to MAML's step size, Meta-SGD's step is MAML's
    ours = inner_loop(metasgd, task.support_x, task.support_y, 2, F.mse_loss)
    reference = inner_loop(maml, task.support_x, task.support_y, 2, F.mse_loss)
    for (name, got), want in zip(ours.module.named_parameters(), reference.module.parameters()):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), name
    assert torch.equal(ours.module.first.weight, network.first.weight)  # frozen: not adapted
    assert not torch.allclose(ours.module.second.weight, network.second.weight)
    # without the flags, the frozen and the unused parameters are an error, as in MAML
    with pytest.raises(RuntimeError):
        inner_loop(MetaSGDLearner(copy.deepcopy(network), lr=INNER_LR), task.support_x,
                   task.support_y, 1, F.mse_loss)


def tiny_anil():
    torch.manual_seed(0)
    model = ANIL(MLP((1,), hidden_sizes=(8, 8)), inner_lr=INNER_LR, inner_steps=2,
                 output_dim=3)
    return model.double().train()


def test_anil_adapts_the_head_only_and_meta_learns_the_body():
    model = tiny_anil()
    generator = torch.Generator().manual_seed(0)
    support_x = torch.randn(6, 1, generator=generator, dtype=torch.double)
    support_y = torch.tensor([0, 1, 2, 0, 1, 2])
    body_before = [p.detach().clone() for p in model.body.parameters()]
    features = model.body(support_x)
    adapted = inner_loop(model.learner, features, support_y, 2, F.cross_entropy)
    # the inner loop sees only the head: its parameters are the head's, and they moved
    assert [p.shape for p in adapted.module.parameters()] == [(3, 8), (3,)]
    assert not torch.allclose(adapted.module.weight, model.learner.module.weight)
    assert all(torch.equal(a, b) for a, b in zip(body_before, model.body.parameters()))
    # the outer loss still reaches the body (it is learned in the outer loop)
    loss = F.cross_entropy(adapted(model.body(support_x)), support_y)
    body_grads = torch.autograd.grad(loss, list(model.body.parameters()))
    assert all(g.abs().sum() > 0 for g in body_grads)


def test_anil_meta_gradient_matches_a_hand_written_loop():
    """The body's features computed once per set; two second-order steps on the head alone; the
    query loss's gradient with respect to the body and the head, written out."""
    model = tiny_anil()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 15, 1, generator=generator, dtype=torch.double)
    labels = torch.tensor([0, 1, 2] * 5).repeat(2, 1)
    batch = TaskBatch(x[:, :6], labels[:, :6], x[:, 6:], labels[:, 6:])
    body, head = model.body, model.learner.module
    body_weights, head_weights = dict(body.named_parameters()), dict(head.named_parameters())
    outer = 0.0
    for task in batch.tasks():
        support_features = functional_call(body, body_weights, (task.support_x,))
        fast = dict(head_weights)
        for _ in range(2):
            loss = F.cross_entropy(functional_call(head, fast, (support_features,)),
                                   task.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {name: w - INNER_LR * g for (name, w), g in zip(fast.items(), grads)}
        query_features = functional_call(body, body_weights, (task.query_x,))
        outer = outer + F.cross_entropy(functional_call(head, fast, (query_features,)),
                                        task.query_y)
    wrt = list(body_weights.values()) + list(head_weights.values())
    expected = torch.autograd.grad(outer / batch.batch_size, wrt)
    loss, _ = model.meta_train_loss(batch)
    assert relative_error(torch.autograd.grad(loss, wrt), expected) < 1e-10


def conv_maml(transductive_bn: bool):
    from metalearn.algorithms.maml import MAML
    from metalearn.models.backbones import Conv4

    torch.manual_seed(0)
    return MAML(Conv4((1, 8, 8), hidden_channels=4, num_blocks=2), inner_lr=0.1,
                test_inner_steps=2, transductive_bn=transductive_bn, output_dim=3).eval()


def test_transductive_bn_switch_decides_which_statistics_adaptation_uses():
    task = make_batch("classification").task(0)
    task = type(task)(*(t.float() if t.is_floating_point() else t for t in task))

    def predictions_with_corrupted_running_stats(model):
        with torch.no_grad():
            clean = model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.fill_(5.0)
                    module.running_var.fill_(50.0)
            corrupted = model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
        return clean, corrupted

    clean, corrupted = predictions_with_corrupted_running_stats(conv_maml(True))
    assert torch.allclose(clean, corrupted)  # batch statistics: running averages are unused
    clean, corrupted = predictions_with_corrupted_running_stats(conv_maml(False))
    assert not torch.allclose(clean, corrupted, atol=1e-3)


def test_gradient_clipping_bounds_the_outer_update(tmp_path):
    import lightning as L

    from metalearn.run.build import build
    from tests.conftest import make_config

    cfg = make_config(["experiment=maml_sinusoid", "episode.meta_batch_size=2",
                       "algorithm.optimizer._target_=torch.optim.SGD", "algorithm.outer_lr=1.0"],
                      tmp_path)
    datamodule, model = build(cfg)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = L.Trainer(max_steps=1, gradient_clip_val=0.001, logger=False,
                        enable_checkpointing=False, limit_val_batches=0, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=datamodule)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # SGD with lr 1 moves the weights by exactly the clipped gradient, whose norm is 0.001
    assert (after - before).norm().item() == pytest.approx(0.001, rel=1e-3)
