"""External memory shared by the Neural Turing Machine and MANN: N slots of width M.

The functions are the addressing and memory operations of the two papers, on batched tensors:
memory [B, N, M], head weightings [B, H, N] (H heads), head parameters [B, H, ...].

- Graves, Wayne and Danihelka 2014 (NTM), section 3: content addressing (3.3.1), interpolation,
  circular shift and sharpening (3.3.2), reading (3.1), erase then add (3.2).
- Santoro et al. 2016 (MANN), section 3.2: least-recently-used access (usage, least-used slots,
  write weights interpolating a head's previous location and its least-used slot).

`MemoryNetwork` is the recurrent shell both machines share: a fresh state (wiped memory) at the
start of every sequence, then one `step` per element.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# keeps cosines defined when a slot or key is all zeros
EPSILON = 1e-8
# every slot starts as this constant: all content weights equal, no NaN cosines
INITIAL_MEMORY_VALUE = 1e-6


def content_weights(memory: Tensor, keys: Tensor, strength: Tensor) -> Tensor:
    """w(i) = softmax_i(beta * cosine(k, M(i))): keys [B, H, M], strength beta [B, H] -> [B, H, N]."""
    cosine = F.normalize(keys, dim=-1, eps=EPSILON) @ F.normalize(memory, dim=-1, eps=EPSILON).mT
    return F.softmax(strength.unsqueeze(-1) * cosine, dim=-1)


def inverse_softplus(value: float) -> float:
    """x with softplus(x) = value > 0: the bias that starts a key strength at `value`."""
    return value + math.log(-math.expm1(-value))


def interpolate(content: Tensor, previous: Tensor, gate: Tensor) -> Tensor:
    """w_g = g w_c + (1 - g) w_{t-1}, gate g [B, H]."""
    gate = gate.unsqueeze(-1)
    return gate * content + (1 - gate) * previous


def circular_shift(weights: Tensor, shift: Tensor) -> Tensor:
    """w~(i) = sum_j w(j) s(i - j) mod N: a circular convolution with a distribution over the
    offsets -R..R (shift [B, H, 2R + 1], its middle entry is offset 0)."""
    radius = shift.shape[-1] // 2
    return sum(shift[..., k: k + 1] * torch.roll(weights, offset, dims=-1)
               for k, offset in enumerate(range(-radius, radius + 1)))


def sharpen(weights: Tensor, gamma: Tensor) -> Tensor:
    """w(i) = w~(i)^gamma / sum_j w~(j)^gamma, gamma >= 1 [B, H]."""
    powered = (weights + EPSILON).pow(gamma.unsqueeze(-1))
    return powered / powered.sum(-1, keepdim=True)


def read(memory: Tensor, weights: Tensor) -> Tensor:
    """r = sum_i w(i) M(i): [B, H, M]."""
    return weights @ memory


def erase_and_add(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """M'(i) = M(i) prod_h [1 - w_h(i) e_h], then M(i) = M'(i) + sum_h w_h(i) a_h.

    weights [B, H, N], erase in [0, 1] and add [B, H, M]. With several write heads the erasures
    multiply and the additions sum, so their order does not matter (section 3.2).
    """
    keep = torch.prod(1 - weights.unsqueeze(-1) * erase.unsqueeze(-2), dim=1)  # [B, N, M]
    return memory * keep + weights.mT @ add


# Least-recently-used access (MANN) -----------------------------------------------------------------
def update_usage(usage: Tensor, decay: float, read_weights: Tensor, write_weights: Tensor) -> Tensor:
    """w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t, summed over heads: usage [B, N]."""
    return decay * usage + read_weights.sum(1) + write_weights.sum(1)


def least_used(usage: Tensor, count: int) -> Tensor:
    """w^lu per head: head h gets the slot of (h+1)-th smallest usage, [B, N] -> [B, count, N].

    The paper's w^lu marks all `count` least-used slots for every head, so with several heads
    each of those slots receives the sum of all heads' keys and they hold the same vector; one
    slot per head (as tristandeleu/ntm-one-shot does) keeps the heads' writes apart.
    """
    slots = usage.topk(count, dim=-1, largest=False).indices  # ascending usage
    return F.one_hot(slots, usage.shape[-1]).to(usage.dtype)


def lru_write_weights(previous: Tensor, least_used_slots: Tensor, gate: Tensor) -> Tensor:
    """w^w_t = sigmoid(alpha) w^prev + (1 - sigmoid(alpha)) w^lu_{t-1}; gate = sigmoid(alpha)
    [B, H]; previous (the paper: the previous read weights) and least_used_slots [B, H, N]."""
    return interpolate(previous, least_used_slots, gate)


def clear_slots(memory: Tensor, slots: Tensor) -> Tensor:
    """Zeroes the slots marked in `slots` [B, H, N] (one-hot per head), as MANN clears the
    least-used slots before writing to them."""
    return memory * (1 - slots.amax(1)).unsqueeze(-1)


# The recurrent shell ------------------------------------------------------------------------------
class MemoryNetwork(nn.Module):
    """A controller with an external memory, run over sequences [B, T, input_size].

    Every call to forward starts from `initial_state`, in which the memory is wiped, so nothing
    stored during one sequence (episode) reaches the next.
    """

    @abstractmethod
    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        """The state at the start of a sequence (a tuple of tensors with batch dimension 0)."""

    @abstractmethod
    def step(self, inputs: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One element [B, input_size] -> (output [B, output_size], next state)."""

    def run(self, inputs: Tensor, state: Any) -> tuple[Tensor, Any]:
        outputs = []
        for t in range(inputs.shape[1]):
            output, state = self.step(inputs[:, t], state)
            outputs.append(output)
        return torch.stack(outputs, dim=1), state

    def forward(self, inputs: Tensor) -> Tensor:
        state = self.initial_state(inputs.shape[0], inputs.device, inputs.dtype)
        return self.run(inputs, state)[0]


def make_controller(kind: str, input_size: int, hidden_size: int) -> nn.Module:
    """An LSTM cell or a one-layer feed-forward ReLU network, both (x, state) -> (h, state):
    CONTROLLERS[kind]."""
    if kind not in CONTROLLERS:
        raise ValueError(f"controller {kind!r} is not one of: {', '.join(CONTROLLERS)}")
    return CONTROLLERS[kind](input_size, hidden_size)


class LSTMController(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.hidden_size = hidden_size

    def initial_state(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return zeros, zeros

    def forward(self, inputs: Tensor, state: tuple[Tensor, Tensor]):
        hidden, cell = self.cell(inputs, state)
        return hidden, (hidden, cell)


class FeedForwardController(nn.Module):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(input_size, hidden_size), nn.ReLU())
        self.hidden_size = hidden_size

    def initial_state(self, batch_size: int, device, dtype) -> tuple[()]:
        return ()

    def forward(self, inputs: Tensor, state: tuple[()]):
        return self.layer(inputs), state


#: the controllers a memory network may have, by name
CONTROLLERS = {"lstm": LSTMController, "feedforward": FeedForwardController}
