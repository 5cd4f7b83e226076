"""The batched backend (tasks batched on torch.func) against the per_task backend (task by task:
learn2learn's MAML/MetaSGD, Reptile's torch.optim on a copy): the same weights and tasks give the
same meta-loss, meta-gradient, BatchNorm running averages and predictions, to 1e-8 in float64;
and how the backend is chosen (metalearn/algorithms/backends.py)."""

from __future__ import annotations

import copy
import weakref
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from metalearn.algorithms.anil import ANIL
from metalearn.algorithms.fomaml import FOMAML
from metalearn.algorithms.maml import MAML
from metalearn.algorithms.metasgd import MetaSGD
from metalearn.algorithms.reptile import Reptile
from metalearn.api import MetaLearner, TaskSampler
from metalearn.data.episodes import TaskBatch
from metalearn.errors import UserError
from metalearn.models.backbones import MLP, Conv4
from tests.helpers import make_batch, relative_error

TOLERANCE = 1e-8
ALGORITHMS = {
    "maml": (MAML, {}),
    "fomaml": (MAML, {"first_order": True}),
    "metasgd": (MetaSGD, {}),
    "anil": (ANIL, {}),
}


def backend_pair(name: str, **args) -> tuple[MAML, MAML]:
    """The algorithm on a Conv4 with BatchNorm, 2 inner steps, in float64, in both backends
    with the same initial weights."""
    cls, defaults = ALGORITHMS[name]
    torch.manual_seed(0)
    backbone = Conv4((1, 8, 8), hidden_channels=4, num_blocks=2)
    batched = cls(backbone, inner_lr=0.3, inner_steps=2, test_inner_steps=2, output_dim=3,
                  backend="batched", **{**defaults, **args}).double().train()
    reference = copy.deepcopy(batched)
    reference.hparams.backend = "per_task"
    return batched, reference


def meta_step(model: MAML, batch: TaskBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss, _ = model.meta_train_loss(batch)
    parameters = [p for p in model.parameters() if p.requires_grad]
    return loss, list(torch.autograd.grad(loss, parameters, materialize_grads=True))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_meta_training_step_matches_learn2learn(name):
    batched, reference = backend_pair(name)
    batch = make_batch("classification")
    loss, gradient = meta_step(batched, batch)
    expected_loss, expected_gradient = meta_step(reference, batch)
    assert abs(loss.item() - expected_loss.item()) < TOLERANCE * abs(expected_loss.item())
    assert relative_error(gradient, expected_gradient) < TOLERANCE
    # the running averages move, and move alike: every support pass, then the queries
    buffers = [b for b in batched.buffers() if b.dtype.is_floating_point]
    expected = [b for b in reference.buffers() if b.dtype.is_floating_point]
    initial = [b for b in backend_pair(name)[0].buffers() if b.dtype.is_floating_point]
    assert relative_error(expected, initial) > 1e-3
    assert relative_error(buffers, expected) < TOLERANCE
    assert [int(b) for b in batched.buffers() if not b.dtype.is_floating_point] == \
        [int(b) for b in reference.buffers() if not b.dtype.is_floating_point]


@pytest.mark.parametrize("name", ["maml", "metasgd", "anil"])
def test_recomputed_inner_steps_match_learn2learn(name):
    """checkpoint_inner_steps: the same meta-loss, meta-gradient and running averages as the
    stored inner steps of learn2learn."""
    batched, reference = backend_pair(name, checkpoint_inner_steps=True)
    reference.hparams.checkpoint_inner_steps = False
    batch = make_batch("classification")
    loss, gradient = meta_step(batched, batch)
    expected_loss, expected_gradient = meta_step(reference, batch)
    assert abs(loss.item() - expected_loss.item()) < TOLERANCE * abs(expected_loss.item())
    assert relative_error(gradient, expected_gradient) < TOLERANCE
    buffers, expected = ([b for b in m.buffers() if b.dtype.is_floating_point]
                         for m in (batched, reference))
    assert relative_error(buffers, expected) < TOLERANCE


def saved_for_backward(model: MAML, batch: TaskBatch, steps: int) -> int:
    """Bytes of the distinct tensors autograd keeps, outside checkpointed regions, for the
    backward pass of a meta-training loss of `steps` inner steps."""
    model.inner_steps = steps
    kept = {}

    def pack(tensor):
        kept[tensor.data_ptr(), tensor.dtype, tuple(tensor.shape)] = tensor.nbytes
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.meta_train_loss(batch)
    return sum(kept.values())


def test_recomputed_inner_steps_keep_no_activations():
    """What the backward pass keeps grows with the inner steps when they are stored (learn2learn
    backend) and not when they are recomputed."""
    recomputing, storing = backend_pair("maml", checkpoint_inner_steps=True)
    storing.hparams.checkpoint_inner_steps = False
    batch = make_batch("classification")
    kept = {steps: (saved_for_backward(storing, batch, steps),
                    saved_for_backward(recomputing, batch, steps)) for steps in (1, 5)}
    assert kept[5][0] > 2.5 * kept[1][0]  # each stored step keeps its activations
    assert kept[5][1] == kept[1][1] < kept[1][0]


@pytest.mark.parametrize("name", ["maml", "metasgd", "anil"])
@pytest.mark.parametrize("recompute", [False, True])
def test_meta_gradient_per_task_matches_learn2learn(name, recompute):
    """backward_per_task: the surrogate loss has the meta-loss's value and its gradient is
    learn2learn's meta-gradient; the running averages move alike (ANIL's body, an ordinary
    module, moves its own task by task: support, then query)."""
    batched, reference = backend_pair(name, backward_per_task=True,
                                      checkpoint_inner_steps=recompute)
    reference.hparams.backward_per_task = reference.hparams.checkpoint_inner_steps = False
    batch = make_batch("classification")
    loss, gradient = meta_step(batched, batch)
    expected_loss, expected_gradient = meta_step(reference, batch)
    assert abs(loss.item() - expected_loss.item()) < TOLERANCE * abs(expected_loss.item())
    assert relative_error(gradient, expected_gradient) < TOLERANCE
    if name != "anil":
        buffers, expected = ([b for b in m.buffers() if b.dtype.is_floating_point]
                             for m in (batched, reference))
        assert relative_error(buffers, expected) < TOLERANCE


class Held:
    """A saved tensor, held for autograd; freed with the graph that holds it."""

    def __init__(self, tensor):
        self.tensor = tensor


def held_for_backward(model: MAML, batch: TaskBatch) -> int:
    """Bytes of the distinct tensors the graph of a meta-training loss still holds (outside
    checkpointed regions) once the loss is built."""
    alive = weakref.WeakSet()

    def pack(tensor):
        alive.add(held := Held(tensor))
        return held

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda held: held.tensor):
        loss, _ = model.meta_train_loss(batch)
    return sum({(h.tensor.data_ptr(), h.tensor.dtype, tuple(h.tensor.shape)): h.tensor.nbytes
                for h in alive}.values())


def test_meta_gradient_per_task_trains_as_the_whole_batch():
    """Through the optimiser (the API's Fabric step): the same losses and weights after three
    outer steps."""
    batch = TaskSampler("sinusoid", k_shot=5, query_size=10, seed=0).sample(4)
    runs = {}
    for per_task in (False, True):
        torch.manual_seed(0)
        learner = MetaLearner("maml", dataset="sinusoid", k_shot=5, inner_steps=2,
                              backward_per_task=per_task)
        losses = [learner.meta_train_step(batch) for _ in range(3)]
        runs[per_task] = losses, list(learner.module.parameters())
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6)
    assert runs[False][0][2] < runs[False][0][0]  # it trains
    assert relative_error(runs[True][1], runs[False][1]) < 1e-6


def test_meta_gradient_per_task_holds_no_task_graph():
    """With every task's graph held, the loss keeps the query passes' activations; per task, no
    more than the surrogate's copy of the gradient (the parameters' size). (Recomputed inner
    steps in both: torch.func's transforms refuse the hooks that measure this.)"""
    held = {}
    for per_task in (False, True):
        model, _ = backend_pair("maml", checkpoint_inner_steps=True, backward_per_task=per_task)
        held[per_task] = held_for_backward(model, make_batch("classification"))
    parameters = sum(p.nbytes for p in model.parameters())
    assert held[True] <= parameters < held[False] / 10


def test_recomputing_needs_second_order_and_the_batched_backend():
    conv = Conv4((1, 8, 8), hidden_channels=4, num_blocks=2)
    with pytest.raises(UserError, match="first_order=true keeps none"):
        MAML(conv, first_order=True, checkpoint_inner_steps=True, output_dim=3)
    with pytest.raises(UserError, match="checkpoint_inner_steps=true needs algorithm.backend="):
        MAML(conv, backend="per_task", checkpoint_inner_steps=True, output_dim=3)
    assert MAML(conv, checkpoint_inner_steps=True, output_dim=3).backend == "batched"
    with pytest.raises(UserError, match="backward_per_task=true needs algorithm.backend="):
        MAML(conv, backend="per_task", backward_per_task=True, output_dim=3)
    per_task = MAML(conv, backward_per_task=True, output_dim=3)
    assert per_task.backend == "batched"
    per_task._trainer = SimpleNamespace(world_size=2)  # as under DDP on two processes
    with pytest.raises(UserError, match="backward_per_task=true runs in one process"):
        per_task.on_fit_start()


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("transductive", [True, False])
def test_evaluation_matches_learn2learn(name, transductive):
    batched, reference = backend_pair(name, transductive_bn=transductive)
    batch = make_batch("classification")
    for model in (batched, reference):  # running averages worth using
        meta_step(model, batch)
        model.eval()
    task = batch.task(1)
    with torch.no_grad():  # as Lightning evaluates
        got = batched.adapt_and_predict(task.support_x, task.support_y, task.query_x)
        expected = reference.adapt_and_predict(task.support_x, task.support_y, task.query_x)
        all_at_once = batched.predict_episodes(batch)
    assert relative_error(got, expected) < TOLERANCE
    # all the tasks adapted at once predict as each adapted alone
    assert relative_error(all_at_once[1], got) < TOLERANCE


def test_parameters_that_do_not_adapt_keep_their_values():
    """allow_nograd: a frozen layer is not adapted in either backend; the batched backend
    gives an unused parameter a zero gradient, as learn2learn's allow_unused does."""
    batched, reference = backend_pair("maml", allow_nograd=True, allow_unused=True)
    for model in (batched, reference):
        network = model.learner.module
        first_conv = next(m for m in network.modules() if isinstance(m, nn.Conv2d))
        first_conv.weight.requires_grad_(False)
        network.register_parameter("unused", nn.Parameter(torch.ones(2, dtype=torch.double)))
    batch = make_batch("classification")
    _, gradient = meta_step(batched, batch)
    _, expected_gradient = meta_step(reference, batch)
    assert relative_error(gradient, expected_gradient) < TOLERANCE
    adapted, _ = batched.adapt_tasks(batch.support_x, batch.support_y, 2)
    frozen = [name for name, p in batched.learner.module.named_parameters()
              if not p.requires_grad]
    assert len(frozen) == 1 and frozen[0] not in adapted and "unused" in adapted
    assert torch.equal(adapted["unused"][0], torch.ones(2, dtype=torch.double))


def test_networks_vmap_cannot_batch_run_task_by_task(caplog):
    """An operation without a batching rule: the batched backend warns once and gives the
    same numbers task by task."""

    class Unbatchable(nn.Module):
        def forward(self, x):
            return x if x.abs().max().item() < 1e6 else x.clamp(-1e6, 1e6)  # vmap has no .item()

    batched, reference = backend_pair("maml")
    for model in (batched, reference):
        model.learner.module = nn.Sequential(Unbatchable(), model.learner.module)
    batch = make_batch("classification")
    loss, gradient = meta_step(batched, batch)
    _, expected_gradient = meta_step(reference, batch)
    assert "task by task" in caplog.text
    assert relative_error(gradient, expected_gradient) < TOLERANCE


def test_unknown_backend_and_compiling_per_task_are_refused():
    conv = Conv4((1, 8, 8), hidden_channels=4, num_blocks=2)
    with pytest.raises(UserError, match="algorithm.backend='jax' is not one of"):
        MAML(conv, backend="jax", output_dim=3)
    with pytest.raises(UserError, match="algorithm.compile=true needs algorithm.backend="):
        MAML(conv, backend="per_task", compile=True, output_dim=3)
    assert MAML(conv, compile=True, output_dim=3).backend == "batched"


def test_auto_backend_batches_where_it_is_faster(caplog):
    """auto: task by task for a convolutional learner on the CPU (bench.md: 0.6-0.8x there),
    batched for a fully connected one (2.6x) and for ANIL, whose adapted learner is a linear head
    on a body that runs task by task anyway; Reptile task by task on any CPU."""
    caplog.set_level("INFO", logger="metalearn.algorithms.backends")
    conv = Conv4((1, 8, 8), hidden_channels=4, num_blocks=2)
    chosen = {name: cls(copy.deepcopy(conv), output_dim=3).backend
              for name, cls in (("maml", MAML), ("metasgd", MetaSGD), ("anil", ANIL))}
    chosen["reptile"] = Reptile(copy.deepcopy(conv), output_dim=3).backend
    chosen["maml on an MLP"] = MAML(MLP((1, 8, 8), (16,)), output_dim=3).backend
    chosen["reptile on an MLP"] = Reptile(MLP((1, 8, 8), (16,)), output_dim=3).backend
    assert chosen == {"maml": "per_task", "metasgd": "per_task", "anil": "batched",
                      "reptile": "per_task", "maml on an MLP": "batched",
                      "reptile on an MLP": "per_task"}
    assert "algorithm.backend=auto: the per_task backend on cpu" in caplog.text


@pytest.mark.parametrize("cls", [MAML, FOMAML, Reptile])
@pytest.mark.parametrize("old, new", [("functional", "batched"), ("learn2learn", "per_task")])
def test_earlier_backend_names_still_run(cls, old, new, caplog):
    """Old checkpoints and command lines: an earlier name is read as the current one, with one
    warning, and saved by the current name."""
    model = cls(MLP((1, 8, 8), (16,)), backend=old, output_dim=3)
    assert model.backend == model.hparams.backend == new
    assert f"algorithm.backend={old} is deprecated: it is now algorithm.backend={new}" \
        in caplog.text
    assert caplog.text.count("deprecated") == 1


def reptile_pair(inner_optimizer: str, **args) -> tuple[Reptile, Reptile]:
    torch.manual_seed(0)
    backbone = Conv4((1, 8, 8), hidden_channels=4, num_blocks=2)
    batched = Reptile(backbone, inner_lr=0.05, inner_steps=3, test_inner_steps=2,
                      inner_optimizer=inner_optimizer, anneal_outer_lr=False, output_dim=3,
                      backend="batched", **args).double().train()
    reference = copy.deepcopy(batched)
    reference.hparams.backend = "per_task"
    return batched, reference


@pytest.mark.parametrize("inner_optimizer", ["sgd", "adam"])
def test_reptile_matches_its_per_task_loop(inner_optimizer):
    """The batched fine-tuning (SGD or Adam) gives torch.optim's weights: the same surrogate
    loss, outer gradient, task losses, averaged running averages and test predictions."""
    batch = make_batch("classification")
    batched, reference = reptile_pair(inner_optimizer)
    (loss, gradient), (expected_loss, expected_gradient) = (meta_step(m, batch)
                                                            for m in (batched, reference))
    assert abs(loss.item() - expected_loss.item()) < TOLERANCE * expected_loss.item()
    assert relative_error(gradient, expected_gradient) < TOLERANCE
    assert abs(batched.mean_task_loss - reference.mean_task_loss) < TOLERANCE
    buffers = [b for b in batched.buffers() if b.dtype.is_floating_point]
    expected = [b for b in reference.buffers() if b.dtype.is_floating_point]
    assert relative_error(buffers, expected) < TOLERANCE
    for transductive in (True, False):
        for model in (batched, reference):
            model.transductive_bn = transductive
            model.eval()
        with torch.no_grad():
            got, want = (m.predict_episodes(batch) for m in (batched, reference))
        assert relative_error(got, want) < TOLERANCE, transductive


@pytest.mark.slow
def test_compiled_meta_training_step_matches_eager():
    """algorithm.compile: the same loss, meta-gradient and running averages, step after step."""
    torch.manual_seed(0)  # one block and one step: compiling takes a minute for two of each
    eager = MAML(Conv4((1, 8, 8), hidden_channels=4, num_blocks=1), inner_lr=0.3, inner_steps=1,
                 output_dim=3).double().train()
    compiled = copy.deepcopy(eager)
    compiled.hparams.compile = True
    batch = make_batch("classification")
    for _ in range(2):  # the first call compiles, the second runs the compiled graph
        loss, gradient = meta_step(compiled, batch)
        expected_loss, expected_gradient = meta_step(eager, batch)
        assert abs(loss.item() - expected_loss.item()) < 1e-10 * abs(expected_loss.item())
        assert relative_error(gradient, expected_gradient) < 1e-10
        assert relative_error(list(compiled.buffers()), list(eager.buffers())) < 1e-10
    assert compiled.compiled_loss is not None and eager.compiled_loss is None
