"""metalearn: meta-learning research framework. The Python API is importable from here."""

from metalearn.api import (
    AdaptedModel,
    MetaLearner,
    TaskSampler,
    compare_checkpoints,
    compare_learners,
    evaluate_few_shot,
)
from metalearn.run.sweeps import aggregate_seeds

__all__ = ["AdaptedModel", "MetaLearner", "TaskSampler", "aggregate_seeds", "compare_checkpoints",
           "compare_learners", "evaluate_few_shot"]
