"""A meta-training budget in CPU time rather than wall time, so that a run on a shared machine gets
the same compute however busy the machine is (Lightning's `max_time` counts wall time)."""

from __future__ import annotations

from time import process_time
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from metalearn.errors import check_positive_number


class CPUTimeLimit(Callback):
    """Stops meta-training once this process has used `minutes` of CPU time (all its threads,
    `time.process_time`) since fitting began, validation included, as `max_time` counts; DataLoader
    worker processes are not counted (the default `episode.num_workers=0` has none). The time used
    travels in checkpoints, so a resumed run spends only what is left."""

    def __init__(self, minutes: float | None = None):
        self.limit_s = (None if minutes is None else
                        60.0 * check_positive_number("callbacks.cpu_time_limit.minutes", minutes))
        self.used_before_s = 0.0  # spent by the run this one resumes
        self.started_s: float | None = None

    def used_s(self) -> float:
        running = 0.0 if self.started_s is None else process_time() - self.started_s
        return self.used_before_s + running

    def on_train_start(self, trainer, pl_module) -> None:
        self.started_s = process_time()

    def on_train_batch_end(self, trainer, *args: Any) -> None:
        if self.limit_s is None:
            return
        should_stop = trainer.strategy.broadcast(self.used_s() >= self.limit_s)
        if should_stop and not trainer.should_stop:
            rank_zero_info(f"CPU time limit reached ({self.used_s() / 60:.1f} minutes): stopping")
        trainer.should_stop = trainer.should_stop or should_stop

    def state_dict(self) -> dict[str, Any]:
        return {"used_s": self.used_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.used_before_s = state_dict["used_s"]
