"""The Neural Turing Machine (Graves et al. 2014) as a meta-learner.

The machine (metalearn/models/ntm.py: content and location addressing, erase-then-add writes, an
LSTM or feed-forward controller) reads each episode as a sequence of (x_t, y_{t-1}) under the
protocol MANN uses (metalearn/algorithms/sequence.py). Santoro et al. 2016 compare exactly this:
location-based addressing against MANN's least-recently-used access.
"""

from __future__ import annotations

from torch import nn

from metalearn.algorithms.sequence import SequenceEpisodeModule
from metalearn.errors import UserError
from metalearn.models.memory import CONTROLLERS
from metalearn.models.ntm import NTMNetwork


class NTM(SequenceEpisodeModule):
    """Args: the machine's settings (see metalearn.models.ntm.NTMNetwork)."""

    def __init__(self, backbone: nn.Module, memory_slots: int = 64, memory_width: int = 40,
                 read_heads: int = 1, write_heads: int = 1, controller: str = "lstm",
                 controller_size: int = 100, shift_radius: int = 1,
                 key_strength: float = 10.0, outer_lr: float = 0.003, **base_args):
        super().__init__(backbone, outer_lr=outer_lr, **base_args)
        if controller not in CONTROLLERS:
            raise UserError(f"algorithm.controller={controller!r} is not one of: "
                            f"{', '.join(CONTROLLERS)}")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.network = NTMNetwork(self.sequence_input_size, self.output_dim, memory_slots,
                                  memory_width, read_heads, write_heads, controller,
                                  controller_size, shift_radius, read_first=True, tape_start=True,
                                  key_strength=key_strength)
