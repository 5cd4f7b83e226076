"""metalearn: meta-learning research framework. The Python API is importable from here."""

import logging

from metalearn.run.allocator import tune_malloc

# before torch allocates anything large (metalearn/run/allocator.py says why)
MALLOC_SETTINGS = tune_malloc()
logging.getLogger(__name__).debug(MALLOC_SETTINGS)

from metalearn.api import (  # noqa: E402
    AdaptedModel,
    MetaLearner,
    TaskSampler,
    compare_checkpoints,
    compare_learners,
    evaluate_few_shot,
)
from metalearn.run.sweeps import aggregate_seeds  # noqa: E402

__all__ = ["AdaptedModel", "MetaLearner", "TaskSampler", "aggregate_seeds", "compare_checkpoints",
           "compare_learners", "evaluate_few_shot"]
