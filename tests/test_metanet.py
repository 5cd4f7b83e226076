"""Meta Networks: layer augmentation, the meta information (per-example and per-pair gradients,
first order), the meta networks m and d, the memory read, Algorithm 1 assembled by hand, the
config, and learning Omniglot with an ablation of the fast weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms.metanet import MetaNet, distinct_pairs
from metalearn.data.episodes import TaskBatch
from metalearn.errors import UserError
from metalearn.models.backbones import Conv4
from metalearn.models.fast_weights import AugmentedLinear, read_memory
from metalearn.models.gradient_preprocessing import preprocess
from metalearn.run.build import build
from metalearn.run.training import train
from tests.budgets import BUDGETS
from tests.conftest import make_config, mean_query_score

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(**kwargs) -> MetaNet:
    torch.manual_seed(0)
    backbone = Conv4((1, 8, 8), hidden_channels=4, num_blocks=2)  # 16 features
    model = MetaNet(backbone, hidden_units=6, embedding_dim=5, meta_hidden_size=4, output_dim=3,
                    **kwargs)
    return model.double().eval()


def images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 1, 8, 8, generator=generator, dtype=torch.double)


def features(count: int, width: int = 16, seed: int = 0) -> torch.Tensor:
    # nonnegative, like the Conv4's ReLU features
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, width, generator=generator, dtype=torch.double)


SUPPORT_Y = torch.tensor([2, 0, 1, 1, 0, 2])  # 3-way 2-shot


# Layer augmentation ---------------------------------------------------------------------------
def test_augmented_layer_sums_the_slow_and_fast_paths_after_the_activation():
    torch.manual_seed(0)
    layer = AugmentedLinear(4, 3, "relu").double()
    x = torch.randn(5, 4, dtype=torch.double)
    fast_w, fast_b = torch.randn(3, 4, dtype=torch.double), torch.randn(3, dtype=torch.double)
    by_hand = (torch.relu(x @ layer.weight.T + layer.bias) + torch.relu(x @ fast_w.T + fast_b))
    assert torch.allclose(layer(x, fast=(fast_w, fast_b)), by_hand)
    # not the activation of the summed weights: the sum comes after the activation
    assert not torch.allclose(layer(x, fast=(fast_w, fast_b)),
                              torch.relu(x @ (layer.weight + fast_w).T + layer.bias + fast_b))
    # one set of fast weights per row (each query's own, read from the memory)
    per_row_w = torch.randn(5, 3, 4, dtype=torch.double)
    per_row_b = torch.randn(5, 3, dtype=torch.double)
    rows = torch.stack([torch.relu(layer.weight @ x[i] + layer.bias)
                        + torch.relu(per_row_w[i] @ x[i] + per_row_b[i]) for i in range(5)])
    assert torch.allclose(layer(x, fast=(per_row_w, per_row_b)), rows)
    # no fast weights is the same as zero fast weights (the ablation)
    zeros = (torch.zeros_like(fast_w), torch.zeros_like(fast_b))
    assert torch.equal(layer(x), layer(x, fast=zeros))
    # the output layer has no activation: W x + b + W* x + b*
    output = AugmentedLinear(4, 3, "identity").double()
    assert torch.allclose(output(x, fast=(fast_w, fast_b)),
                          x @ (output.weight + fast_w).T + output.bias + fast_b)


# Meta information ------------------------------------------------------------------------------
def test_example_meta_information_is_each_support_examples_own_loss_gradient():
    model = make_model()
    h = features(6).requires_grad_()
    gradients = model.example_meta_information(h, SUPPORT_Y)
    assert [tuple(g.shape) for pair in gradients for g in pair] == [(6, 6, 16), (6, 6),
                                                                    (6, 3, 6), (6, 3)]
    assert not any(g.requires_grad for pair in gradients for g in pair)  # constants
    slow = [p for layer in model.base_layers for p in (layer.weight, layer.bias)]
    hidden_layer, output_layer = model.base_layers
    for i in range(6):
        # autograd on example i alone, through b's slow weights only
        loss = F.cross_entropy(model.base_forward(h[i:i + 1]), SUPPORT_Y[i:i + 1])
        expected = torch.autograd.grad(loss, slow)
        got = [g[i] for pair in gradients for g in pair]
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, atol=1e-12)
        # the output layer's by hand: (softmax(logits) - one_hot(y)) outer hidden activations
        hidden = torch.relu(hidden_layer.weight @ h[i] + hidden_layer.bias)
        error = (torch.softmax(output_layer.weight @ hidden + output_layer.bias, 0)
                 - F.one_hot(SUPPORT_Y[i], 3))
        assert torch.allclose(gradients[1][0][i], torch.outer(error, hidden).detach(), atol=1e-12)
        assert torch.allclose(gradients[1][1][i], error.detach(), atol=1e-12)


def test_task_meta_information_is_each_pairs_verification_loss_gradient():
    model = make_model()
    h = features(6)
    first, second = distinct_pairs(6)
    assert len(first) == 15 and (first < second).all()
    gradients = model.task_meta_information(h, SUPPORT_Y)
    (weight_gradients, bias_gradients), = gradients
    assert weight_gradients.shape == (15, 5, 16) and bias_gradients.shape == (15, 5)
    layer = model.representation_layer
    for t, (i, j) in enumerate(zip(first.tolist(), second.tolist())):
        u_i = torch.relu(layer.weight @ h[i] + layer.bias)
        u_j = torch.relu(layer.weight @ h[j] + layer.bias)
        # BCE of sigmoid(w^T |u_i - u_j| + c) against "same class"
        logit = model.verifier_weight @ (u_i - u_j).abs() + model.verifier_bias
        same = float(SUPPORT_Y[i] == SUPPORT_Y[j])
        loss = F.binary_cross_entropy_with_logits(logit, torch.tensor(same, dtype=torch.double))
        expected = torch.autograd.grad(loss, [layer.weight, layer.bias])
        assert torch.allclose(weight_gradients[t], expected[0], atol=1e-12)
        assert torch.allclose(bias_gradients[t], expected[1], atol=1e-12)
    # a single support example has no pair, hence no task-level fast weights
    assert model.task_meta_information(h[:1], SUPPORT_Y[:1]) is None


# The meta networks -----------------------------------------------------------------------------
def test_m_maps_every_coordinate_of_the_gradient_alone():
    model = make_model()
    gradients = model.example_meta_information(features(6), SUPPORT_Y)
    fast = model.example_fast_weights(gradients)
    assert [f.shape for pair in fast for f in pair] == [g.shape for pair in gradients for g in pair]
    m = model.example_meta_learner
    for layer in range(2):
        for part in range(2):
            g, w = gradients[layer][part], fast[layer][part]
            assert torch.allclose(w, m(preprocess(g)).squeeze(-1), atol=1e-12)
    # coordinate by coordinate: the same gradient value gives the same fast weight anywhere
    index = (4, 2, 7)
    value = gradients[0][0][index]
    assert torch.allclose(fast[0][0][index], m(preprocess(value.view(1))).squeeze(), atol=1e-12)


def test_d_is_an_lstm_over_each_coordinates_pair_gradients():
    model = make_model()
    gradients = model.task_meta_information(features(6), SUPPORT_Y)
    (fast_w, fast_b), = model.task_fast_weights(gradients)
    assert fast_w.shape == model.representation_layer.weight.shape
    lstm = model.task_meta_lstm
    cell = nn.LSTMCell(2, lstm.hidden_size).double()
    cell.load_state_dict({"weight_ih": lstm.weight_ih_l0, "weight_hh": lstm.weight_hh_l0,
                          "bias_ih": lstm.bias_ih_l0, "bias_hh": lstm.bias_hh_l0})
    for row, column in [(0, 0), (3, 11), (4, 15)]:
        state = None
        for t in range(15):  # the T = 15 pairs, in order
            state = cell(preprocess(gradients[0][0][t, row, column]).view(1, 2), state)
        expected = model.task_meta_readout(state[0]).squeeze()
        assert torch.allclose(fast_w[row, column], expected, atol=1e-12)
    # the bias coordinates too, with the same LSTM
    state = None
    for t in range(15):
        state = cell(preprocess(gradients[0][1][t, 2]).view(1, 2), state)
    assert torch.allclose(fast_b[2], model.task_meta_readout(state[0]).squeeze(), atol=1e-12)
    # the order of the pairs matters to an LSTM (it is a sequence, not a set)
    reversed_pairs = [(w.flip(0), b.flip(0)) for w, b in gradients]
    assert not torch.allclose(model.task_fast_weights(reversed_pairs)[0][0], fast_w)


# The memory read and Algorithm 1 ---------------------------------------------------------------
def test_query_fast_weights_are_the_attention_weighted_sum_of_the_memory():
    generator = torch.Generator().manual_seed(0)
    memory = [(torch.randn(4, 3, 2, generator=generator), torch.randn(4, 3, generator=generator))]
    attention = torch.softmax(torch.randn(5, 4, generator=generator), dim=1)
    (weights, biases), = read_memory(attention, memory)
    for q in range(5):
        assert torch.allclose(weights[q], sum(attention[q, i] * memory[0][0][i] for i in range(4)),
                              atol=1e-6)
        assert torch.allclose(biases[q], sum(attention[q, i] * memory[0][1][i] for i in range(4)),
                              atol=1e-6)
    # a one-hot attention reads exactly that example's fast weights
    (picked, _), = read_memory(F.one_hot(torch.tensor([2]), 4).float(), memory)
    assert torch.equal(picked[0], memory[0][0][2])


def test_attention_is_a_softmax_of_cosines_that_favours_the_identical_support_example():
    model = make_model()
    support_x = images(6)
    with torch.no_grad():
        _, h_u = model.embed(torch.cat([support_x, support_x[[3, 0, 5]]]))
        pair_gradients = model.task_meta_information(h_u[:6], SUPPORT_Y)
        keys = model.represent(h_u, fast=model.task_fast_weights(pair_gradients))
        attention = model.attention(keys[:6], keys[6:])
    cosine = F.cosine_similarity(keys[6:, None], keys[None, :6], dim=-1)
    assert torch.allclose(attention, torch.softmax(model.cosine_scale * cosine, dim=1))
    assert torch.allclose(attention.sum(1), torch.ones(3, dtype=torch.double))
    assert attention.argmax(1).tolist() == [3, 0, 5]


def test_task_predictions_follow_algorithm_1_written_out():
    model = make_model()
    support_x, query_x = images(6), images(4, seed=1)
    scores = model.task_predictions(support_x, SUPPORT_Y, query_x)
    with torch.no_grad():
        h_b, h_u = model.base_backbone(support_x), model.representation_backbone(support_x)
        q_b, q_u = model.base_backbone(query_x), model.representation_backbone(query_x)
        # lines 2-7: Q* from the pair gradients
        task_fast = model.task_fast_weights(model.task_meta_information(h_u, SUPPORT_Y))
        # lines 8-15: W*_i into M, r'_i = u(Q, Q*, x'_i) into R
        memory = model.example_fast_weights(model.example_meta_information(h_b, SUPPORT_Y))
        keys = model.represent(h_u, fast=task_fast)
        expected = []
        for q in range(4):  # lines 17-21, one query at a time
            r = model.represent(q_u[q:q + 1], fast=task_fast)
            a = torch.softmax(model.cosine_scale * F.cosine_similarity(r, keys), dim=0)
            fast = [(sum(a[i] * w[i] for i in range(6)), sum(a[i] * b[i] for i in range(6)))
                    for w, b in memory]
            expected.append(model.base_forward(q_b[q:q + 1], fast=fast)[0])
    assert scores.shape == (4, 3)
    assert torch.allclose(scores, torch.stack(expected), atol=1e-10)


def test_meta_information_is_first_order():
    """The support examples reach b only through their gradients, which are constants: with u's
    view of them cut, the query loss has no gradient with respect to the support images (b's
    backbone in eval mode treats every image alone), while it has one with respect to the
    queries."""
    model = make_model()

    class DetachInput(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x.detach())

    model.representation_backbone = DetachInput(model.representation_backbone)
    support_x, query_x = images(6).requires_grad_(), images(9, seed=1).requires_grad_()
    loss = F.cross_entropy(model.task_predictions(support_x, SUPPORT_Y, query_x),
                           torch.arange(3).repeat(3))
    support_gradient, query_gradient = torch.autograd.grad(loss, [support_x, query_x],
                                                           allow_unused=True)
    assert support_gradient is None or support_gradient.abs().max() == 0
    assert query_gradient.abs().max() > 0


def test_a_training_step_trains_every_parameter():
    model = make_model().train()
    batch = TaskBatch(images(6).unsqueeze(0), SUPPORT_Y.unsqueeze(0), images(9, seed=1).unsqueeze(0),
                    torch.arange(3).repeat(3).unsqueeze(0))
    loss, predictions = model.meta_train_loss(batch)
    assert predictions.shape == (1, 9, 3)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # the verifier is fixed (first-order meta information could not train it)
    assert {"verifier_weight", "verifier_bias"} <= dict(model.named_buffers()).keys()


def test_without_fast_weights_the_support_set_is_ignored():
    model = make_model()
    query_x = images(4, seed=1)
    with_fast = model.adapt_and_predict(images(6), SUPPORT_Y, query_x)
    model.use_fast_weights = False
    slow_only = model.adapt_and_predict(images(6), SUPPORT_Y, query_x)
    other_support = model.adapt_and_predict(images(6, seed=2), SUPPORT_Y.flip(0), query_x)
    assert torch.allclose(slow_only, model.base_forward(model.base_backbone(query_x)))
    assert torch.equal(slow_only, other_support)
    assert not torch.allclose(with_fast, slow_only)


# Config ----------------------------------------------------------------------------------------
def test_config_builds_metanet_and_keeps_one_output_per_class(tmp_path):
    _, model = build(make_config(["algorithm=metanet"], tmp_path))
    assert isinstance(model, MetaNet)
    assert model.base_layers[1].weight.shape == (5, model.hparams.hidden_units)
    assert model.representation_backbone is not model.base_backbone
    _, shared = build(make_config(["algorithm=metanet", "algorithm.share_backbone=true"], tmp_path))
    assert shared.representation_backbone is shared.base_backbone
    with pytest.raises(UserError, match="one output per class"):
        build(make_config(["algorithm=metanet", "episode.train_n_way=20"], tmp_path))


# Learning real Omniglot ------------------------------------------------------------------------
@pytest.mark.slow
def test_metanet_learns_omniglot_5way_1shot_through_its_fast_weights(tmp_path):
    budget = BUDGETS["metanet (lake)"]
    cfg = make_config(budget.overrides, tmp_path)
    record = train(cfg)
    assert (record["algorithm"], record["n_way"], record["k_shot"]) == ("metanet", 5, 1)
    budget.check(record)

    datamodule, model = build(cfg)
    checkpoint = torch.load(tmp_path / record["tested_checkpoint"], map_location="cpu",
                            weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    datamodule.setup("test")
    with torch.no_grad():
        accuracy = mean_query_score(model, datamodule.test_dataloader())
        model.use_fast_weights = False
        without_fast_weights = mean_query_score(model, datamodule.test_dataloader())
    assert accuracy == pytest.approx(record["test_acc"], abs=1e-4)
    # the slow weights alone cannot follow labels that are permuted in every episode
    assert without_fast_weights <= accuracy - 0.10, (accuracy, without_fast_weights)
