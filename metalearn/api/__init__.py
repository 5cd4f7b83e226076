"""The Python API: `MetaLearner`, `TaskSampler`, `evaluate_few_shot`, and the comparisons
`compare_learners` (learners on the same episodes) and `compare_checkpoints` (compare.py).

Faces over the run engine (metalearn/run/): a MetaLearner composes the config train.py composes,
builds the same Lightning module and fits with the same engine; its checkpoints are train.py's.
"""

from metalearn.api.comparisons import compare_checkpoints, compare_learners, evaluate_few_shot
from metalearn.api.learner import AdaptedModel, MetaLearner, evaluating
from metalearn.api.sampler import TaskSampler

__all__ = ["AdaptedModel", "MetaLearner", "TaskSampler", "compare_checkpoints",
           "compare_learners", "evaluate_few_shot", "evaluating"]
