"""MANN: meta-learning with memory-augmented neural networks (Santoro et al., ICML 2016).

The network (metalearn/models/mann.py: LSTM controller, least-recently-used writes,
content-based reads) reads each episode as a sequence of (x_t, y_{t-1}) under the protocol of
metalearn/algorithms/sequence.py, which also reports accuracy by presentation number.
"""

from __future__ import annotations

from torch import nn

from metalearn.algorithms.sequence import SequenceEpisodeModule
from metalearn.models.mann import MANNNetwork


class MANN(SequenceEpisodeModule):
    """Args: the memory network's settings (see metalearn.models.mann.MANNNetwork)."""

    def __init__(self, backbone: nn.Module, memory_slots: int = 64, memory_width: int = 40,
                 read_heads: int = 1, controller_size: int = 100, usage_decay: float = 0.99,
                 key_strength: float = 10.0, outer_lr: float = 0.003, **base_args):
        super().__init__(backbone, outer_lr=outer_lr, **base_args)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.network = MANNNetwork(self.sequence_input_size, self.output_dim, memory_slots,
                                   memory_width, read_heads, controller_size, usage_decay,
                                   key_strength)
