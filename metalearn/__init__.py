"""metalearn: meta-learning research framework. The Python API is importable from here."""

import logging

from metalearn.allocator import tune_malloc

# before torch allocates anything large (metalearn/allocator.py says why)
MALLOC_SETTINGS = tune_malloc()
logging.getLogger(__name__).debug(MALLOC_SETTINGS)

from metalearn.api import AdaptedModel, MetaLearner, TaskSampler, evaluate_few_shot  # noqa: E402

__all__ = ["AdaptedModel", "MetaLearner", "TaskSampler", "evaluate_few_shot"]
