"""Checkpoints: every one carries the run's resolved config, so eval.py, resuming and the Python
API rebuild the exact model and data from the checkpoint alone.

Lightning's checkpoint callbacks write train.py's; `save_checkpoint` writes the Python API's with
the same contents and through the same writer (Lightning's TorchCheckpointIO, whole or not at
all), so either is read by `load_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from metalearn.errors import UserError

CONFIG_KEY = "metalearn_config"


class StoreConfigInCheckpoint(Callback):
    """Puts the run's resolved config into every checkpoint."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config


def save_checkpoint(path: str | Path, module: L.LightningModule, optimizer: torch.optim.Optimizer,
                    config: dict[str, Any], global_step: int) -> Path:
    """A checkpoint of a module trained outside a Trainer (the Python API), as train.py's hold it:
    weights, optimiser state, step, and the config (added by the same callback)."""
    checkpoint = {
        "state_dict": module.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "global_step": global_step,
        "pytorch-lightning_version": L.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    StoreConfigInCheckpoint(config).on_save_checkpoint(None, module, checkpoint)
    TorchCheckpointIO().save_checkpoint(checkpoint, path)
    return Path(path)


def load_checkpoint(ckpt_path: str) -> dict:
    """A checkpoint written by train.py or the Python API; anything else is a UserError."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path!r}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UserError(f"ckpt_path={ckpt_path!r} is not a readable checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint:
        raise UserError(f"ckpt_path={ckpt_path!r} was not written by metalearn's train.py "
                        f"(it has no {CONFIG_KEY!r} entry)")
    return checkpoint
