"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio and Vinyals, ICLR 2020).

MAML that adapts only the network's head in the inner loop: the body (the backbone) is shared by
all tasks and is updated only by the outer loop (section 4, "ANIL"). The paper finds this matches
MAML's accuracy, since MAML's gains come from feature reuse rather than rapid learning. Support and
query go through the body in one pass, as in learn2learn's ANIL example.
"""

from __future__ import annotations

from torch import nn

from metalearn.algorithms.maml import MAML


class ANIL(MAML):
    supported_task_types = ("classification",)

    def split_model(self, backbone: nn.Module, head: nn.Module) -> tuple[nn.Module, nn.Module]:
        return backbone, head
