"""The external memory's addressing and access against values computed by hand, the machines'
memory wipe between sequences, and the NTM's copy task against an LSTM."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.copy_task import LSTMBaseline, bit_errors_by_length, train_copy
from metalearn.models.mann import MANNNetwork
from metalearn.models.memory import (
    circular_shift,
    clear_slots,
    content_weights,
    erase_and_add,
    interpolate,
    inverse_softplus,
    least_used,
    lru_write_weights,
    read,
    sharpen,
    update_usage,
)
from metalearn.models.ntm import NTMNetwork


def batch(*rows) -> torch.Tensor:
    """A [1, 1, ...] tensor: one sequence, one head."""
    return torch.tensor(rows, dtype=torch.float).view(1, 1, -1)


def test_content_weights_are_a_softmax_of_key_strength_times_cosine():
    memory = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])
    key = batch(2.0, 0.0)
    weights = content_weights(memory, key, torch.tensor([[2.0]]))
    # cosines 1, 0, -1; times beta = 2
    expected = torch.tensor([math.exp(2), 1.0, math.exp(-2)])
    assert torch.allclose(weights.flatten(), expected / expected.sum())
    sharper = content_weights(memory, key, torch.tensor([[20.0]]))
    assert sharper.flatten()[0] > 0.999


def test_interpolation_gate_mixes_content_and_previous_weights():
    mixed = interpolate(batch(1.0, 0.0, 0.0), batch(0.0, 0.0, 1.0), torch.tensor([[0.25]]))
    assert torch.allclose(mixed.flatten(), torch.tensor([0.25, 0.0, 0.75]))


def test_circular_shift_rotates_by_the_shift_distribution():
    weights = batch(0.1, 0.2, 0.3, 0.4)
    # all mass on offset +1: every weight moves one slot forward, the last wraps to the first
    assert torch.allclose(circular_shift(weights, batch(0.0, 0.0, 1.0)).flatten(),
                          torch.tensor([0.4, 0.1, 0.2, 0.3]))
    assert torch.allclose(circular_shift(weights, batch(1.0, 0.0, 0.0)).flatten(),
                          torch.tensor([0.2, 0.3, 0.4, 0.1]))
    # w~(i) = sum_j w(j) s(i - j), written out for s = (0.5, 0.5, 0) over offsets (-1, 0, +1)
    blurred = circular_shift(weights, batch(0.5, 0.5, 0.0)).flatten()
    assert torch.allclose(blurred, torch.tensor([0.15, 0.25, 0.35, 0.25]))


def test_sharpening_raises_to_gamma_and_renormalises():
    sharpened = sharpen(batch(0.5, 0.25, 0.25), torch.tensor([[2.0]])).flatten()
    assert torch.allclose(sharpened, torch.tensor([0.25, 0.0625, 0.0625]) / 0.375, atol=1e-6)


def test_erase_then_add_by_hand():
    memory = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    weights = batch(1.0, 0.5)
    updated = erase_and_add(memory, weights, erase=batch(1.0, 0.5), add=batch(10.0, 20.0))
    # slot 0 (w = 1): [1 * (1 - 1), 2 * (1 - 0.5)] + [10, 20]
    # slot 1 (w = .5): [3 * (1 - .5), 4 * (1 - .25)] + [5, 10]
    assert torch.allclose(updated, torch.tensor([[[10.0, 21.0], [6.5, 13.0]]]))
    assert torch.allclose(read(updated, batch(0.5, 0.5)).flatten(), torch.tensor([8.25, 17.0]))


def test_two_write_heads_multiply_erasures_and_sum_additions():
    memory = torch.ones(1, 1, 1)
    weights = torch.tensor([[[1.0], [1.0]]])  # two heads on the one slot
    updated = erase_and_add(memory, weights, erase=torch.tensor([[[0.5], [0.5]]]),
                            add=torch.tensor([[[1.0], [2.0]]]))
    assert updated.item() == pytest.approx(1 * 0.5 * 0.5 + 3)


def test_lru_usage_least_used_slots_and_write_weights():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.0]])
    read_weights = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]])
    write_weights = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])
    new_usage = update_usage(usage, 0.5, read_weights, write_weights)
    assert torch.allclose(new_usage, torch.tensor([[0.35, 1.25, 0.75, 0.4]]))
    # one slot per head: the least used for head 0, the next for head 1
    assert least_used(new_usage, 1).tolist() == [[[1.0, 0.0, 0.0, 0.0]]]
    assert least_used(new_usage, 2).tolist() == [[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]
    gate = torch.tensor([[0.75]])
    write = lru_write_weights(read_weights, least_used(new_usage, 1), gate)
    assert torch.allclose(write, torch.tensor([[[0.325, 0.15, 0.225, 0.3]]]))
    cleared = clear_slots(torch.ones(1, 4, 2), least_used(new_usage, 2))
    assert cleared[0, :, 0].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_key_strength_starts_where_asked():
    for value in (0.5, 1.0, 10.0, 30.0):
        assert torch.nn.functional.softplus(torch.tensor(inverse_softplus(value))).item() == \
            pytest.approx(value, rel=1e-5)
    mann = MANNNetwork(6, 3, memory_slots=8, memory_width=4, read_heads=2, controller_size=16,
                       key_strength=10.0)
    ntm = NTMNetwork(6, 3, memory_slots=8, memory_width=4, read_heads=2, controller_size=16,
                     tape_start=True, key_strength=10.0)
    silent = torch.zeros(1, 16)  # a controller output of zeros leaves the biases
    betas = [mann.head_parameters(silent).view(2, -1)[:, 4],
             ntm.read_parameters(silent).view(2, -1)[:, 4],
             ntm.write_parameters(silent).view(1, -1)[:, 4]]
    for beta in betas:
        assert torch.allclose(torch.nn.functional.softplus(beta), torch.tensor(10.0))


def reference_mann_step(net: MANNNetwork, x, state):
    """One MANN step as metalearn/models/mann.py describes it (read M_{t-1} by content; write to
    each head's least-used slot and, gated, to the slot it wrote last), written with loops over
    sequences, heads and slots from the network's own weights."""
    memory, reads, _, usage, _, written, (h, c) = state
    batch, slots, width, heads = x.shape[0], net.slots, net.width, net.heads
    results = {name: [] for name in ("output", "memory", "reads", "read_weights", "usage")}
    for b in range(batch):
        hidden, _ = net.controller.cell(torch.cat([x[b], reads[b].flatten()]).unsqueeze(0),
                                        (h[b:b + 1], c[b:b + 1]))
        params = net.head_parameters(hidden)[0].view(heads, -1)
        keys = [torch.tanh(params[head, :width]) for head in range(heads)]
        old = memory[b]
        read_weights, read_vectors = torch.zeros(heads, slots), torch.zeros(heads, width)
        for head, key in enumerate(keys):
            beta = torch.nn.functional.softplus(params[head, width])
            cosines = torch.stack([key @ old[i] / (key.norm() * old[i].norm())
                                   for i in range(slots)])
            read_weights[head] = torch.softmax(beta * cosines, dim=0)
            read_vectors[head] = sum(read_weights[head, i] * old[i] for i in range(slots))
        order = sorted(range(slots), key=lambda i: usage[b, i].item())  # least used first
        new = old.clone()
        for head in range(heads):
            new[order[head]] = 0.0
        write_weights = torch.zeros(heads, slots)
        for head, key in enumerate(keys):
            sigma = torch.sigmoid(params[head, width + 1])
            for i in range(slots):
                fresh = 1.0 if i == order[head] else 0.0
                write_weights[head, i] = sigma * written[b, head, i] + (1 - sigma) * fresh
                new[i] = new[i] + write_weights[head, i] * key
        results["output"].append(net.output(torch.cat([hidden[0], read_vectors.flatten()])))
        results["memory"].append(new)
        results["reads"].append(read_vectors)
        results["read_weights"].append(read_weights)
        results["usage"].append(net.usage_decay * usage[b] + read_weights.sum(0)
                                + write_weights.sum(0))
    return [torch.stack(values) for values in results.values()]


def test_mann_step_matches_a_loop_over_heads_and_slots():
    torch.manual_seed(0)
    net = MANNNetwork(5, 3, memory_slots=6, memory_width=4, read_heads=2, controller_size=8)
    memory, reads, _, _, _, written, controller = net.initial_state(
        2, torch.device("cpu"), torch.float)
    # usage without ties (their order is arbitrary), memory not uniform
    usage = torch.rand(2, 6)
    state = (torch.randn(2, 6, 4), reads, None, usage, least_used(usage, 2), written, controller)
    with torch.no_grad():
        for _ in range(4):
            x = torch.randn(2, 5)
            expected = reference_mann_step(net, x, state)
            lru_slots = state[4]
            output, state = net.step(x, state)
            memory, reads, read_weights, usage = state[:4]
            for got, want in zip((output, memory, reads, read_weights, usage), expected):
                assert torch.allclose(got, want, atol=1e-5), (got, want)
            # next: the slots of smallest usage, one per head; and the slots written this step
            assert state[4].argmax(-1).tolist() == usage.argsort(-1)[:, :2].tolist()
            assert torch.equal(state[5], lru_slots)


@pytest.mark.parametrize("machine", [
    NTMNetwork(6, 3, memory_slots=8, memory_width=4, controller_size=16),
    NTMNetwork(6, 3, memory_slots=8, memory_width=4, controller="feedforward", controller_size=16),
    MANNNetwork(6, 3, memory_slots=8, memory_width=4, read_heads=2, controller_size=16),
])
def test_memory_is_wiped_between_sequences(machine):
    torch.manual_seed(0)
    first, second = torch.randn(2, 1, 7, 6).unbind(0)
    with torch.no_grad():
        alone = machine(second)
        after_first = machine(torch.cat([first, second]))[1:]  # the two as a batch: independent
        state = machine.initial_state(1, second.device, second.dtype)
        _, carried = machine.run(first, state)
        leaked = machine.run(second, carried)[0]
    assert torch.equal(machine(second), alone)
    assert torch.allclose(after_first, alone, atol=1e-6)
    # the test can tell: carrying the first sequence's state over changes the outputs
    assert not torch.allclose(leaked, alone, atol=1e-4)


@pytest.mark.slow
def test_ntm_learns_to_copy_far_better_than_an_lstm_of_similar_size():
    torch.manual_seed(0)
    ntm = NTMNetwork(9, 8, memory_slots=16, memory_width=10, controller_size=50)
    lstm = LSTMBaseline(9, 8, hidden_size=64)
    sizes = [sum(p.numel() for p in model.parameters()) for model in (ntm, lstm)]
    assert 0.8 < sizes[1] / sizes[0] < 1.25, sizes
    for model in (ntm, lstm):
        train_copy(model, steps=1500, min_length=1, max_length=5, lr=3e-3)
    ntm_errors = bit_errors_by_length(ntm, [3, 5])
    lstm_errors = bit_errors_by_length(lstm, [3, 5])
    # out of 24 and 40 bits; measured 0.0 / 0.03 for the NTM, 1.3 / 7.8 for the LSTM
    assert ntm_errors[5] < 0.5, ntm_errors
    assert lstm_errors[5] > 4 * max(ntm_errors[5], 0.25), (ntm_errors, lstm_errors)


def test_ntm_starts_writing_on_a_tape_and_reads_before_writing():
    torch.manual_seed(0)
    net = NTMNetwork(6, 3, memory_slots=12, memory_width=4, read_heads=2, controller_size=16,
                     read_first=True, tape_start=True)
    state = net.initial_state(3, torch.device("cpu"), torch.float)
    with torch.no_grad():
        for t in range(1, 6):
            memory_before = state[0]
            _, state = net.step(torch.randn(3, 6), state)
            memory, reads, read_weights, write_weights, _ = state
            # the write head advances one slot a step from slot 0, sharply
            assert write_weights.argmax(-1).eq(t).all(), write_weights.argmax(-1)
            assert write_weights.amax(-1).min() > 0.9
            # reads come from the memory as it was before this step's write
            assert torch.allclose(reads, read(memory_before, read_weights), atol=1e-6)
            assert not torch.allclose(memory, memory_before)
