"""metalearn: meta-learning research framework. The Python API is importable from here."""

from metalearn.api import AdaptedModel, MetaLearner, TaskSampler, evaluate_few_shot

__all__ = ["AdaptedModel", "MetaLearner", "TaskSampler", "evaluate_few_shot"]
