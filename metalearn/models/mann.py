"""The memory-augmented neural network of Santoro et al. 2016 (MANN), section 3.

An LSTM controller reads the input with the previous read vectors and emits, per head, a key k_t,
a key strength beta and a write gate alpha. Writing uses least-recently-used access: the write weights interpolate
the head's previous read weights and the least-used slots (w^w_t = sigmoid(alpha) w^r_{t-1} +
(1 - sigmoid(alpha)) w^lu_{t-1}); before writing, the least-used slot is cleared; the key is added
where the weights point (M_t(i) = M_{t-1}(i) + w^w_t(i) k_t). Reading is purely content-based:
a softmax of the cosine similarities to the key, sharpened by beta as in the NTM. The paper's
softmax has no beta; without it, attention over 128 slots of cosines in [-1, 1] is nearly uniform
(at most e / (e + 127) on one slot) and the network learns to use its memory far more slowly. Usage decays by gamma and accumulates the read and
write weights; the least-used slots are the `read_heads` slots of smallest usage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.models.memory import (
    INITIAL_MEMORY_VALUE,
    LSTMController,
    MemoryNetwork,
    clear_least_used_slot,
    content_weights,
    least_used,
    lru_write_weights,
    read,
    update_usage,
)


class MANNNetwork(MemoryNetwork):
    """Args:
        input_size, output_size: widths of one sequence element in and out.
        memory_slots, memory_width: N and M (paper: 128 x 40).
        read_heads: heads, each with its own key for reading and writing (paper: 4).
        controller_size: the LSTM controller's width (paper: 200).
        usage_decay: gamma, the decay of the usage weights per step.
    """

    def __init__(self, input_size: int, output_size: int, memory_slots: int = 128,
                 memory_width: int = 40, read_heads: int = 4, controller_size: int = 200,
                 usage_decay: float = 0.99):
        super().__init__()
        self.slots, self.width, self.heads = memory_slots, memory_width, read_heads
        self.usage_decay = usage_decay
        self.controller = LSTMController(input_size + read_heads * memory_width, controller_size)
        # key, beta, alpha
        self.head_parameters = nn.Linear(controller_size, read_heads * (memory_width + 2))
        self.output = nn.Linear(controller_size + read_heads * memory_width, output_size)

    def initial_state(self, batch_size: int, device, dtype):
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(batch_size, *shape, device=device, dtype=dtype)

        memory = zeros(self.slots, self.width) + INITIAL_MEMORY_VALUE
        usage = zeros(self.slots)
        return (memory, zeros(self.heads, self.width), zeros(self.heads, self.slots), usage,
                least_used(usage, self.heads),
                self.controller.initial_state(batch_size, device, dtype))

    def step(self, inputs: Tensor, state):
        memory, reads, read_weights, usage, least_used_slots, controller = state
        batch = inputs.shape[0]
        hidden, controller = self.controller(torch.cat([inputs, reads.flatten(1)], dim=1),
                                             controller)
        keys, beta, alpha = self.head_parameters(hidden).view(batch, self.heads, -1).split(
            [self.width, 1, 1], dim=-1)
        keys = torch.tanh(keys)
        write_weights = lru_write_weights(read_weights, least_used_slots,
                                          torch.sigmoid(alpha).squeeze(-1))
        memory = clear_least_used_slot(memory, usage)
        memory = memory + write_weights.mT @ keys
        read_weights = content_weights(memory, keys, F.softplus(beta).squeeze(-1))
        reads = read(memory, read_weights)
        usage = update_usage(usage, self.usage_decay, read_weights, write_weights)
        least_used_slots = least_used(usage, self.heads)
        output = self.output(torch.cat([hidden, reads.flatten(1)], dim=1))
        return output, (memory, reads, read_weights, usage, least_used_slots, controller)
