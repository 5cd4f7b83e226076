"""Callbacks the runner always adds (user-configurable ones live in configs/callbacks/)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

CONFIG_KEY = "metalearn_config"


class StoreConfigInCheckpoint(Callback):
    """Puts the run's resolved config into every checkpoint, so eval.py and resuming can rebuild
    the exact model and data from the checkpoint alone."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
