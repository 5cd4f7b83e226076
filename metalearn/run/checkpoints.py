"""Checkpoints: every one carries the run's resolved config, so eval.py, resuming and the Python
API rebuild the exact model and data from the checkpoint alone; and whatever else a resumed run
needs to go on as if it had never stopped (the metric history written so far, the wall time).

Every checkpoint is written whole or not at all by `AtomicCheckpointIO` (Lightning's writer
would swallow a failed write and lose the weights silently; ours stops the run). `RunCheckpoint`
names its checkpoints relative to its folder, so a moved or copied run directory resumes and tests
its own files. The Python API's checkpoints (`save_checkpoint`) have the same contents and go
through the same writer, so `load_checkpoint` reads either.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from metalearn.errors import UserError
from metalearn.files import atomic_write
from metalearn.run.loggers import flush_csv

CONFIG_KEY = "metalearn_config"
RUN_STATE_KEY = "metalearn_run_state"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save through `atomic_write`; a write that fails is a UserError naming the file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        try:
            with atomic_write(path) as partial:
                torch.save(checkpoint, partial)
        except OSError as error:
            raise UserError(f"cannot write the checkpoint {path} ({error.strerror or error}); "
                            "the run stopped so that no trained weights are lost silently") from None


class RunState(Callback):
    """Puts into every checkpoint the run's resolved config and its state: the inputs the model
    was built for (`TaskFamily.input_record`: their shape, which evaluation on another dataset
    resizes to, and a text family's tokenizer, which encodes the other texts), the rows of the
    CSV logger's metrics.csv written so far (flushed first), with the row of the step whose end
    saves the checkpoint, and the training wall time so far. `started` is when the run began,
    earlier than now when it resumes."""

    def __init__(self, config: dict[str, Any], input_record: dict[str, Any],
                 started: float | None = None):
        self.config, self.input_record = config, input_record
        self.started = time.time() if started is None else started
        self.pending_row: dict[str, float] | None = None

    def on_train_batch_end(self, trainer, *args) -> None:
        # Lightning logs a step's metrics after its callbacks, where every_n_train_steps saves a
        # checkpoint: keep the row it is about to log (checkpoint callbacks run after this one)
        connector = trainer._logger_connector
        self.pending_row = None
        if connector.should_update_logs:
            row = {name: float(value) for name, value in connector.metrics["log"].items()}
            row.setdefault("epoch", trainer.current_epoch)
            self.pending_row = {**row, "step": trainer.fit_loop.epoch_loop._batches_that_stepped}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.pending_row = None  # logged by now

    def on_validation_start(self, trainer, pl_module) -> None:
        self.pending_row = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[RUN_STATE_KEY] = dict(self.input_record)
        if trainer is not None:
            checkpoint[RUN_STATE_KEY].update(csv_rows=flush_csv(trainer.loggers),
                                             pending_row=self.pending_row,
                                             wall_time_s=time.time() - self.started)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with three changes:

    - last.ckpt is also written at the step where a SIGTERM stops the run;
    - a step's checkpoints are written after that step's validation, where it has one: Lightning
      skips the validation of the step a checkpoint was written at when it resumes from it;
    - last.ckpt is refreshed at every checkpoint time. Lightning 2.6 refreshes it only when a
      top-k checkpoint is written, so a run whose meta-val score stopped improving kept a
      last.ckpt of its last improvement, and resuming it silently trained those epochs again;
    - its state holds its checkpoints' paths relative to its folder (Lightning keeps absolute
      ones: a moved run directory failed at test time, a copied one tested the original's
      weights). The state keeps ModelCheckpoint's key, so earlier checkpoints resume too.
    """

    PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_saved_at: int | None = None  # the step of the last last.ckpt
        self.deferred: tuple | None = None  # a step end waiting for its step's validation

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, monitor_candidates)

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        loop = trainer.fit_loop.epoch_loop
        if not trainer.sanity_checking and loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self.deferred = (args, kwargs)
            return
        self.save_at_step_end(trainer, *args, **kwargs)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.deferred is not None:
            (args, kwargs), self.deferred = self.deferred, None
            self.save_at_step_end(trainer, *args, **kwargs)

    def save_at_step_end(self, trainer, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        # Lightning stops a run on SIGTERM (a scheduler's preemption, a kill) at the end of the
        # step without saving: keep the step in last.ckpt first. One process only: DDP's ranks
        # may see the signal at different steps, and saving waits for all of them.
        if trainer.received_sigterm and self.save_last and trainer.world_size == 1:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        if self.last_saved_at != trainer.global_step:  # Lightning may ask again for the same step
            super()._save_last_checkpoint(trainer, monitor_candidates)
            self.last_saved_at = trainer.global_step

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in self.PATH_KEYS:
            state[key] = self.relative(state[key])
        state["best_k_models"] = {self.relative(path): score
                                  for path, score in state["best_k_models"].items()}
        state["dirpath"] = None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict, dirpath=self.dirpath)
        for key in self.PATH_KEYS:
            state[key] = self.absolute(state.get(key, ""))
        state["best_k_models"] = {self.absolute(path): score
                                  for path, score in state.get("best_k_models", {}).items()}
        super().load_state_dict(state)

    def relative(self, path: str) -> str:
        return os.path.relpath(path, self.dirpath) if path else path

    def absolute(self, path: str) -> str:
        """A path of this folder: relative ones as they are stored now, absolute ones (from
        earlier versions) by their file name."""
        return os.path.join(self.dirpath, os.path.basename(path) if os.path.isabs(path)
                            else path) if path else path


def save_checkpoint(path: str | Path, module: L.LightningModule, optimizer: torch.optim.Optimizer,
                    config: dict[str, Any], input_record: dict[str, Any],
                    global_step: int) -> Path:
    """A checkpoint of a module trained outside a Trainer (the Python API), as train.py's hold it:
    weights, optimiser state, step, and the config (added by the same callback)."""
    checkpoint = {
        "state_dict": module.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "global_step": global_step,
        "pytorch-lightning_version": L.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    RunState(config, input_record).on_save_checkpoint(None, module, checkpoint)
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    return Path(path)


def load_checkpoint(ckpt_path: str, key: str = "ckpt_path") -> dict:
    """A checkpoint written by train.py or the Python API; anything else is a UserError naming
    `key`, the setting that named the file."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"{key}={ckpt_path!r}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UserError(f"{key}={ckpt_path!r} is not a readable checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint:
        raise UserError(f"{key}={ckpt_path!r} was not written by metalearn's train.py "
                        f"(it has no {CONFIG_KEY!r} entry)")
    return checkpoint
