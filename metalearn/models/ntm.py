"""The Neural Turing Machine (Graves, Wayne and Danihelka 2014).

A controller (LSTM or feed-forward) reads the input and the previous read vectors and emits, for
every head, the addressing parameters of section 3.3: key k, key strength beta, interpolation gate
g, shift distribution s and sharpening gamma; write heads also emit an erase vector e and an add
vector a. Each step writes (erase, then add) and then reads, and the output layer sees the
controller's output with the new read vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalearn.models.memory import (
    INITIAL_MEMORY_VALUE,
    MemoryNetwork,
    circular_shift,
    content_weights,
    erase_and_add,
    interpolate,
    make_controller,
    read,
    sharpen,
)


class NTMNetwork(MemoryNetwork):
    """Args:
        input_size, output_size: widths of one sequence element in and out.
        memory_slots, memory_width: N and M.
        read_heads, write_heads: how many of each.
        controller: "lstm" or "feedforward".
        controller_size: the controller's hidden width.
        shift_radius: R, shifts of -R..R slots are allowed (the paper uses 1).
    """

    def __init__(self, input_size: int, output_size: int, memory_slots: int = 128,
                 memory_width: int = 20, read_heads: int = 1, write_heads: int = 1,
                 controller: str = "lstm", controller_size: int = 100, shift_radius: int = 1):
        super().__init__()
        self.slots, self.width = memory_slots, memory_width
        self.read_heads, self.write_heads = read_heads, write_heads
        # key, beta, g, s, gamma
        self.address_sizes = [memory_width, 1, 1, 2 * shift_radius + 1, 1]
        address_size = sum(self.address_sizes)
        self.controller = make_controller(controller, input_size + read_heads * memory_width,
                                          controller_size)
        self.read_parameters = nn.Linear(controller_size, read_heads * address_size)
        self.write_parameters = nn.Linear(controller_size,
                                          write_heads * (address_size + 2 * memory_width))
        self.output = nn.Linear(controller_size + read_heads * memory_width, output_size)

    def address(self, parameters: Tensor, memory: Tensor, previous: Tensor) -> Tensor:
        """Content addressing, then interpolation, shift and sharpening (figure 2)."""
        key, beta, gate, shift, gamma = parameters.split(self.address_sizes, dim=-1)
        weights = content_weights(memory, key, F.softplus(beta).squeeze(-1))
        weights = interpolate(weights, previous, torch.sigmoid(gate).squeeze(-1))
        weights = circular_shift(weights, F.softmax(shift, dim=-1))
        return sharpen(weights, 1 + F.softplus(gamma).squeeze(-1))

    def initial_state(self, batch_size: int, device, dtype):
        memory = torch.full((batch_size, self.slots, self.width), INITIAL_MEMORY_VALUE,
                            device=device, dtype=dtype)
        reads = torch.zeros(batch_size, self.read_heads, self.width, device=device, dtype=dtype)

        def first_slot(heads: int) -> Tensor:
            weights = torch.zeros(batch_size, heads, self.slots, device=device, dtype=dtype)
            weights[..., 0] = 1.0
            return weights

        controller = self.controller.initial_state(batch_size, device, dtype)
        return memory, reads, first_slot(self.read_heads), first_slot(self.write_heads), controller

    def step(self, inputs: Tensor, state):
        memory, reads, read_weights, write_weights, controller = state
        batch = inputs.shape[0]
        hidden, controller = self.controller(torch.cat([inputs, reads.flatten(1)], dim=1),
                                             controller)
        write = self.write_parameters(hidden).view(batch, self.write_heads, -1)
        addressing, erase, add = write.split([sum(self.address_sizes), self.width, self.width], -1)
        write_weights = self.address(addressing, memory, write_weights)
        memory = erase_and_add(memory, write_weights, torch.sigmoid(erase), add)
        addressing = self.read_parameters(hidden).view(batch, self.read_heads, -1)
        read_weights = self.address(addressing, memory, read_weights)
        reads = read(memory, read_weights)
        output = self.output(torch.cat([hidden, reads.flatten(1)], dim=1))
        return output, (memory, reads, read_weights, write_weights, controller)
