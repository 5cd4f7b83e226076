"""First-order MAML (Finn, Abbeel and Levine, ICML 2017, section 5.2).

MAML with the second-order terms dropped: the inner steps are not differentiated through, so the
meta-gradient of a task is the query-loss gradient taken at its adapted weights. Cheaper in memory
and time; the paper reports nearly the same accuracy on mini-ImageNet.
"""

from __future__ import annotations

from metalearn.algorithms.maml import MAML


class FOMAML(MAML):
    def __init__(self, backbone, first_order: bool = True, **maml_args):
        super().__init__(backbone, first_order=first_order, **maml_args)
