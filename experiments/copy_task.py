"""The NTM paper's copy task (Graves et al. 2014, section 4.1), as a benchmark for sequence
models with memory.

A sequence of random 8-bit vectors is presented, then a delimiter on its own channel; the model
must then output the sequence again, with no input. Loss is the binary cross-entropy over the
output phase; a sequence's bit errors are the output bits that differ from the target once
rounded (the paper's "cost per sequence" figure counts the same bits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def copy_batch(batch_size: int, length: int, bits: int,
               generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(inputs [B, 2L + 1, bits + 1], targets [B, L, bits]); the last input channel is the
    delimiter, and the model's last L outputs are scored."""
    sequence = torch.randint(0, 2, (batch_size, length, bits), generator=generator).float()
    inputs = torch.zeros(batch_size, 2 * length + 1, bits + 1)
    inputs[:, :length, :bits] = sequence
    inputs[:, length, bits] = 1.0
    return inputs, sequence


def copy_loss_and_errors(model: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(mean binary cross-entropy, bit errors per sequence [B]) of a model mapping [B, T, in] to
    [B, T, bits] logits."""
    logits = model(inputs)[:, -targets.shape[1]:]
    loss = F.binary_cross_entropy_with_logits(logits, targets)
    errors = ((logits > 0).float() != targets).float().sum(dim=(1, 2))
    return loss, errors


def train_copy(model: nn.Module, steps: int, min_length: int, max_length: int, bits: int = 8,
               batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
               clip: float = 10.0) -> list[float]:
    """Trains on sequences of uniformly drawn lengths; returns the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        length = int(torch.randint(min_length, max_length + 1, (), generator=generator))
        loss, _ = copy_loss_and_errors(model, *copy_batch(batch_size, length, bits, generator))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def bit_errors_by_length(model: nn.Module, lengths: list[int], bits: int = 8,
                         sequences: int = 100, seed: int = 1) -> dict[int, float]:
    """Mean bit errors per sequence at each length, on fresh sequences."""
    generator = torch.Generator().manual_seed(seed)
    return {length: copy_loss_and_errors(model, *copy_batch(sequences, length, bits,
                                                            generator))[1].mean().item()
            for length in lengths}


class LSTMBaseline(nn.Module):
    """The paper's comparison: an LSTM with a linear read-out, [B, T, in] -> [B, T, out]."""

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 100,
                 num_layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.output = nn.Linear(hidden_size, output_size)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.output(self.lstm(inputs)[0])
