"""The Python API under a hostile user: the SPEC's calls serve every algorithm (n_steps
everywhere), Reptile's meta_train_step returns a loss a user can read, every misuse is one clear
line, and the console stays quiet (no Gym notice, no Lightning tips)."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn import MetaLearner, TaskSampler, compare_learners, evaluate_few_shot
from metalearn.algorithms.reptile import Reptile
from metalearn.api.comparisons import episode_scores
from metalearn.data.episodes import TaskBatch
from metalearn.models.backbones import Conv4
from tests.conftest import ROOT
from tests.helpers import make_batch, relative_error, user_error

LAKE = ["dataset.split=lake", "dataset.rotations=false"]


@pytest.fixture(scope="module")
def protonet() -> MetaLearner:
    return MetaLearner("protonet", overrides=LAKE)


@pytest.fixture(scope="module")
def task():
    return TaskSampler(overrides=LAKE).sample().task(0)


def manual_scores(learner: MetaLearner, sampler: TaskSampler, episodes: int,
                  n_steps: int | None) -> list[float]:
    """Each fixed episode's query accuracy, adapting with learner.adapt."""
    return [learner.evaluate(learner.adapt(episode.task(0).support, n_steps=n_steps),
                             episode.task(0).query)
            for episode in sampler.fixed_episodes(episodes)]


# n_steps for every algorithm -------------------------------------------------------------------
def test_a_one_pass_algorithm_takes_n_steps_and_says_once_that_it_ignores_them(protonet, task):
    expected = protonet.adapt(task.support)(task.query_x)
    with pytest.warns(UserWarning, match=r"^protonet adapts in one pass over the support set; "
                                         r"it ignores n_steps"):
        adapted = protonet.adapt(task.support, n_steps=10)
    assert torch.equal(adapted(task.query_x), expected)
    sampler = TaskSampler(split="test", overrides=LAKE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: not again, by adapt or by the evaluations
        protonet.adapt(task.support, n_steps=10)
        steps_given = episode_scores(protonet, sampler, n_episodes=2, n_steps=10)
        compare_learners([protonet, protonet], sampler, n_episodes=2, n_steps=3)
    assert steps_given.tolist() == pytest.approx(manual_scores(protonet, sampler, 2, None))
    assert user_error(lambda: protonet.adapt(task.support, n_steps=-1)).startswith(
        "n_steps=-1 must be a whole number >= 0")


def test_evaluations_adapt_gradient_algorithms_in_n_steps(task):
    learner = MetaLearner("maml", inner_lr=0.5, overrides=LAKE)
    sampler = TaskSampler(split="test", overrides=LAKE)
    by_steps = {}
    for steps in (0, 2):
        by_steps[steps] = episode_scores(learner, sampler, n_episodes=3, n_steps=steps).tolist()
        assert by_steps[steps] == pytest.approx(manual_scores(learner, sampler, 3, steps))
    assert by_steps[0] != by_steps[2]
    mean, _ = evaluate_few_shot(learner, sampler, n_episodes=3, n_steps=2)
    assert mean == pytest.approx(sum(by_steps[2]) / 3)
    learners = compare_learners([learner, learner], sampler, n_episodes=3, n_steps=0)["learners"]
    assert learners[0]["score"] == pytest.approx(sum(by_steps[0]) / 3)
    assert user_error(lambda: evaluate_few_shot(learner, sampler, n_episodes=3, n_steps=1.5)
                      ).startswith("n_steps=1.5 must be a whole number >= 0")


# Reptile's loss ----------------------------------------------------------------------------------
def reptile_reference(network: nn.Module, batch: TaskBatch, inner_lr: float, steps: int,
                      outer_lr: float) -> tuple[float, dict[str, torch.Tensor]]:
    """Batched Reptile by hand, with plain SGD inner steps on each task's support and query
    examples together: the mean query loss of the adapted copies, and theta's parameters and
    buffers after the outer step (buffers: the copies' mean)."""
    theta = {name: value.detach().clone() for name, value in network.state_dict().items()}
    adapted, query_losses = [], []
    for task in batch.tasks():
        copy_ = copy.deepcopy(network).train()
        x = torch.cat([task.support_x, task.query_x])
        y = torch.cat([task.support_y, task.query_y])
        loss_fn = F.mse_loss if y.is_floating_point() else F.cross_entropy
        for _ in range(steps):
            grads = torch.autograd.grad(loss_fn(copy_(x), y), list(copy_.parameters()))
            with torch.no_grad():
                for weight, grad in zip(copy_.parameters(), grads):
                    weight -= inner_lr * grad
        adapted.append({name: value.detach().clone()
                        for name, value in copy_.state_dict().items()})
        with torch.no_grad():
            query_losses.append(loss_fn(copy_(task.query_x), task.query_y))
    mean = {name: sum(weights[name] for weights in adapted) / len(adapted) for name in theta}
    parameters = dict(network.named_parameters())
    after = {name: theta[name] + outer_lr * (mean[name] - theta[name]) if name in parameters
             else mean[name] for name in theta if theta[name].is_floating_point()}
    return torch.stack(query_losses).mean().item(), after


@pytest.mark.parametrize("backend", ["per_task", "batched"])
def test_reptile_loss_is_the_query_loss_and_its_step_is_reptile_s(backend):
    """With BatchNorm, in float64: the step's loss is the tasks' mean query loss after their inner
    steps, and one SGD step on it moves theta by epsilon * (mean W - theta), buffers to the
    copies' mean, as the hand-written loop does."""
    torch.manual_seed(0)
    model = Reptile(Conv4((1, 8, 8), hidden_channels=4, num_blocks=2), inner_lr=0.3,
                    inner_optimizer="sgd", inner_steps=2, outer_lr=0.7, anneal_outer_lr=False,
                    backend=backend, task_type="classification", output_dim=3).double()
    batch = make_batch("classification")
    expected_loss, expected = reptile_reference(model.learner, batch, 0.3, 2, 0.7)

    loss, predictions = model.meta_train_loss(batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.7)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert loss.item() == pytest.approx(expected_loss, rel=1e-10)
    assert predictions.shape == (2, 9, 3)
    state = model.learner.state_dict()
    assert relative_error([state[name] for name in expected], list(expected.values())) < 1e-10


def test_api_reptile_step_returns_the_query_loss_after_adaptation():
    learner = MetaLearner("reptile", dataset="sinusoid", inner_optimizer="sgd", inner_lr=0.02,
                          inner_steps=3, outer_lr=0.5, seed=1)
    batch = TaskSampler("sinusoid", k_shot=5, query_size=10, seed=2).sample(3)
    network = learner.module.learner
    expected_loss, expected = reptile_reference(network, batch, 0.02, 3, 0.5)

    loss = learner.meta_train_step(batch)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert relative_error([weight.detach() for weight in network.parameters()],
                          list(expected.values())) < 1e-5


# One clear line for each misuse -------------------------------------------------------------------
def test_labels_must_be_integer_class_indices_of_two_or_more_classes(protonet, task):
    names = np.array(["cat", "dog", "eel", "fox", "gnu"])
    integer_classes = "support_set labels must be integer class indices 0..N-1 (map class names "
    for labels in (names[task.support_y.numpy()], names[task.support_y.numpy()].tolist(),
                   [None] * 5):
        assert user_error(lambda: protonet.adapt((task.support_x, labels))).startswith(
            integer_classes)
    adapted = protonet.adapt(task.support)
    assert user_error(lambda: protonet.evaluate(
        adapted, (task.query_x, names[task.query_y.numpy()]))).startswith(
        "query_set labels must be integer class indices 0..N-1")
    assert user_error(lambda: protonet.adapt((task.support_x[:1], task.support_y[:1] * 0))
                      ) == ("support_set has examples of 1 class: a task needs at least 2 "
                            "classes, labelled 0..N-1")
    one_class = TaskBatch(task.support_x[None, :1], task.support_y[None, :1] * 0,
                          task.query_x[None, :3], task.query_y[None, :3] * 0)
    assert user_error(lambda: protonet.meta_train_step(one_class)).startswith(
        "tasks support_y has examples of 1 class")
    assert user_error(lambda: protonet.adapt((task.support_x, 3))).startswith(
        "support_set has 5 inputs but a single target")
    for inputs in ("abc", None, ["a"] * 5, list(task.support_x)):
        assert user_error(lambda: protonet.adapt((inputs, task.support_y))).startswith(
            "support_set x must be a tensor or array of numbers (a list of tensors: "
            "torch.stack it); got ")


def test_labels_of_any_integer_type_and_inputs_of_any_float_type_score_alike(protonet, task):
    expected = protonet.evaluate(protonet.adapt(task.support), task.query)
    adapted = protonet.adapt((task.support_x.double(), task.support_y.int()))
    assert protonet.evaluate(adapted, (task.query_x, task.query_y.short())) == expected
    batch = TaskBatch(*(part[None] for part in task))
    narrow = TaskBatch(batch.support_x, batch.support_y.int(), batch.query_x.double(),
                       batch.query_y.int())
    assert episode_scores(protonet, narrow, n_episodes=1).item() == expected


def test_sampler_counts_and_shapes_are_checked():
    sampler = TaskSampler(overrides=LAKE)
    cases = [
        (lambda: sampler.fixed_episodes(-1), "count=-1 must be a whole number >= 1"),
        (lambda: sampler.fixed_episodes(0), "count=0 must be a whole number >= 1"),
        (lambda: sampler.fixed_episodes(2.5), "count=2.5 must be a whole number >= 1"),
        (lambda: sampler.fixed_episodes(1, n_way=0), "n_way=0 must be a whole number >= 1"),
        (lambda: sampler.fixed_episodes(1, k_shot=-1), "k_shot=-1 must be a whole number >= 1"),
        (lambda: sampler.fixed_episodes(1, n_way=2000), "episode.n_way=2000 is more than the"),
        (lambda: TaskSampler(seed="a", overrides=LAKE), "seed='a' must be a whole number >= 0"),
    ]
    for make, message in cases:
        assert user_error(make).startswith(message), message
    # another shape that fits is drawn as asked
    assert next(sampler.fixed_episodes(1, n_way=3, k_shot=2)).support_y.shape == (1, 6)


def test_evaluation_counts_and_levels_are_checked(protonet):
    sampler = TaskSampler(split="test", overrides=LAKE)
    cases = [
        (lambda: evaluate_few_shot(protonet, sampler, n_way=0, n_episodes=2),
         "n_way=0 must be a whole number >= 1"),
        (lambda: evaluate_few_shot(protonet, sampler, k_shot=-1, n_episodes=2),
         "k_shot=-1 must be a whole number >= 1"),
        (lambda: evaluate_few_shot(protonet, sampler, n_episodes=-1),
         "n_episodes=-1 must be a whole number >= 1"),
        (lambda: compare_learners([protonet, protonet], sampler, n_episodes=2, alpha=2),
         "alpha=2 must be a number between 0 and 1"),
    ]
    for make, message in cases:
        assert user_error(make).startswith(message), message


# A quiet console ------------------------------------------------------------------------------
def test_importing_metalearn_and_learn2learn_prints_nothing():
    result = subprocess.run([sys.executable, "-c", "import metalearn, learn2learn"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert result.stderr == "" and result.stdout == ""


class Recorder(logging.Handler):
    """The messages of the records that reach Lightning's loggers' handlers."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def lightning_messages():
    recorder = Recorder()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric",
                                                     "pytorch_lightning", "lightning_fabric")]
    for logger in loggers:
        logger.addHandler(recorder)
    yield recorder.messages
    for logger in loggers:
        logger.removeHandler(recorder)


CHATTER = ("GPU available:", "TPU available:", "💡 Tip:")


def chatter(messages: list[str]) -> list[str]:
    return [message for message in messages if message.startswith(CHATTER)]


def test_quiet_lightning_holds_back_device_lines_and_tips(lightning_messages):
    import learn2learn  # noqa: F401  (it imports pytorch_lightning, whose logger then speaks)
    import lightning as L

    from metalearn.api.learner import quiet_lightning

    L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    # what Lightning says: at least its device line (train.py's trainers, once made in this
    # process, hold back its tips and TPU line for good)
    assert any(m.startswith("GPU available:") for m in lightning_messages)
    lightning_messages.clear()
    with quiet_lightning():
        L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert chatter(lightning_messages) == []
    L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert chatter(lightning_messages)  # only within the block


@pytest.mark.slow
def test_api_fit_and_comparison_are_quiet(tmp_path, lightning_messages):
    from metalearn import compare_checkpoints

    learner = MetaLearner("protonet", hidden_channels=8, val_episodes=2, overrides=LAKE,
                          output_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = learner.fit(TaskSampler(overrides=LAKE), steps=1)
        compare_checkpoints([result["last_checkpoint"], result["best_checkpoint"]],
                            overrides=["episode.test_episodes=2"],
                            output_dir=tmp_path / "compare")
    assert lightning_messages and chatter(lightning_messages) == [], lightning_messages
    assert not [str(w.message) for w in caught if "LeafSpec" in str(w.message)]
