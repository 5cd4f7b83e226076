"""Reptile: its outer step against a hand-written inner loop, the annealed outer rate, evaluation,
and meta-learning on the sinusoid and on Omniglot."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader

from metalearn.algorithms.reptile import Reptile
from metalearn.errors import UserError
from metalearn.models.backbones import MLP, Conv4
from metalearn.run.build import build
from metalearn.run.training import train
from tests.budgets import BUDGETS
from tests.conftest import make_config
from tests.helpers import make_batch, relative_error

INNER_LR, INNER_STEPS, OUTER_LR = 0.05, 3, 0.7


def tiny_reptile(**kwargs) -> Reptile:
    torch.manual_seed(0)
    model = Reptile(MLP((1,), hidden_sizes=(8, 8)), inner_lr=INNER_LR, inner_steps=INNER_STEPS,
                    outer_lr=OUTER_LR, task_type="regression", output_dim=1, **kwargs)
    return model.double()


def fit(model: Reptile, batches: list, **trainer_args) -> L.Trainer:
    """Meta-trains with a real Lightning Trainer, one outer step per batch."""
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_args)
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


def reference_fine_tune(network, x, y, steps: int, optimizer: str) -> dict[str, torch.Tensor]:
    """The weights after `steps` full-batch steps on the MSE from `network`'s own: SGD, or Adam
    with beta1 = 0 written out (the first moment is then the gradient itself)."""
    weights = {name: w.detach() for name, w in network.named_parameters()}
    second_moment = {name: torch.zeros_like(w) for name, w in weights.items()}
    for t in range(1, steps + 1):
        weights = {name: w.requires_grad_() for name, w in weights.items()}
        loss = F.mse_loss(functional_call(network, weights, (x,)), y)
        grads = dict(zip(weights, torch.autograd.grad(loss, list(weights.values()))))
        if optimizer == "adam":
            for name, g in grads.items():
                second_moment[name] = 0.999 * second_moment[name] + 0.001 * g * g
                grads[name] = g / ((second_moment[name] / (1 - 0.999 ** t)).sqrt() + 1e-8)
        weights = {name: (w - INNER_LR * grads[name]).detach() for name, w in weights.items()}
    return weights


def expected_outer_step(model: Reptile, batch, optimizer: str) -> list[torch.Tensor]:
    """epsilon * mean_i (phi_i - theta), each phi_i fitted to all of task i's examples."""
    theta = {name: w.detach().clone() for name, w in model.learner.named_parameters()}
    adapted = [
        reference_fine_tune(model.learner, torch.cat([task.support_x, task.query_x]),
                            torch.cat([task.support_y, task.query_y]), INNER_STEPS, optimizer)
        for task in batch.tasks()
    ]
    return [OUTER_LR * (sum(phi[name] for phi in adapted) / len(adapted) - w)
            for name, w in theta.items()]


@pytest.mark.parametrize("inner_optimizer", ["sgd", "adam"])
def test_outer_step_is_epsilon_times_the_mean_pull_of_the_tasks(inner_optimizer):
    model = tiny_reptile(inner_optimizer=inner_optimizer, anneal_outer_lr=False)
    batch = make_batch("regression")
    expected = expected_outer_step(model, batch, inner_optimizer)
    other = expected_outer_step(model, batch, {"sgd": "adam", "adam": "sgd"}[inner_optimizer])
    theta = [w.detach().clone() for w in model.learner.parameters()]

    fit(model, [batch])
    step = [new.detach() - old for new, old in zip(model.learner.parameters(), theta)]
    assert relative_error(step, expected) < 1e-6
    # the references tell the two inner optimisers apart
    assert relative_error(other, expected) > 0.1


def test_trainer_gradient_clipping_bounds_the_outer_step():
    model, batch = tiny_reptile(anneal_outer_lr=False), make_batch("regression")
    full = expected_outer_step(model, batch, "adam")
    pull = torch.cat([s.flatten() for s in full]).norm() / OUTER_LR  # ||theta - mean(phi)||
    theta = [w.detach().clone() for w in model.learner.parameters()]

    fit(model, [batch], gradient_clip_val=(0.1 * pull).item())
    step = [new.detach() - old for new, old in zip(model.learner.parameters(), theta)]
    assert relative_error(step, [0.1 * s for s in full]) < 1e-4


@pytest.mark.parametrize(("anneal", "factors"), [(True, [1.0, 0.8, 0.6, 0.4, 0.2]),
                                                 (False, [1.0] * 5)])
def test_annealing_lowers_the_outer_rate_linearly_to_zero(anneal, factors):
    rates = []

    class RecordRate(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    model = tiny_reptile(anneal_outer_lr=anneal)
    trainer = fit(model, [make_batch("regression")] * 5, callbacks=[RecordRate()])
    assert rates == pytest.approx([OUTER_LR * f for f in factors])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0 if anneal else OUTER_LR)


def test_evaluation_fine_tunes_on_the_support_set_and_leaves_theta_alone():
    model = tiny_reptile(inner_optimizer="adam", test_inner_steps=7).eval()
    task = make_batch("regression").task(0)
    adapted = reference_fine_tune(model.learner, task.support_x, task.support_y, 7, "adam")
    expected = functional_call(model.learner, adapted, (task.query_x,))

    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():  # as Lightning evaluates
        predictions = model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
    assert not predictions.requires_grad
    assert torch.allclose(predictions, expected, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_evaluation_leaves_batchnorm_statistics_alone():
    backbone = Conv4((1, 8, 8), hidden_channels=4, num_blocks=2)
    model = Reptile(backbone, task_type="classification", output_dim=3).double().eval()
    task = make_batch("classification").task(0)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with torch.no_grad():
        model.adapt_and_predict(task.support_x, task.support_y, task.query_x)
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"algorithm.inner_optimizer='rmsprop'.*: sgd, adam"):
        build(make_config(["algorithm=reptile", "algorithm.inner_optimizer=rmsprop"], tmp_path))
    with pytest.raises(UserError, match="algorithm.anneal_outer_lr=true"):
        tiny_reptile(anneal_outer_lr=True, scheduler=partial(StepLR, step_size=1))


@pytest.mark.slow
def test_reptile_learns_omniglot_5way_1shot(tmp_path):
    budget = BUDGETS["reptile (omniglot)"]
    budget.check(train(make_config(budget.overrides, tmp_path)))
