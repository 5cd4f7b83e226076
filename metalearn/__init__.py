"""metalearn: meta-learning research framework. The Python API is importable from here."""


def silence_gym_notice() -> None:
    """learn2learn imports gym, and importing gym prints gym_notices' deprecation notice for its
    version to stderr; metalearn uses none of gym, so the notice says nothing to our users.
    Emptying the notices (before anything imports gym) silences exactly that print."""
    try:
        from gym_notices import notices
    except ImportError:  # no gym, or one that prints no notices
        return
    notices.notices.clear()


silence_gym_notice()

import importlib  # noqa: E402

#: each name of the API and the module that defines it, imported on first use (PEP 562), so that
#: importing the package, as every entry point does, loads neither torch nor Lightning and a
#: configuration mistake is reported in about a second
EXPORTS = {"AdaptedModel": "metalearn.api", "MetaLearner": "metalearn.api",
           "TaskSampler": "metalearn.api", "compare_checkpoints": "metalearn.api",
           "compare_learners": "metalearn.api", "evaluate_few_shot": "metalearn.api",
           "aggregate_seeds": "metalearn.run.sweeps"}
__all__ = sorted(EXPORTS)


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module 'metalearn' has no attribute {name!r}")
    return getattr(importlib.import_module(EXPORTS[name]), name)
