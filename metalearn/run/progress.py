"""A run's pace and how it is shown: the validation after its last step, the cadence at which it
logs its loss, and the training progress bar, with the meta-training throughput in tasks per
second (examples per second for the algorithms that pre-train on examples) and an ETA that ends
where max_steps or max_time ends the run."""

from __future__ import annotations

import math
from time import perf_counter

from lightning.pytorch.callbacks import Callback, Timer, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

from metalearn.data.episodes import ExampleBatch

#: trainer.log_every_n_steps where the config leaves it null: this many steps, or fewer in a
#: run too short to log its loss CURVE_POINTS times at that interval
LOG_EVERY_N_STEPS = 10
CURVE_POINTS = 20


def planned_steps(trainer) -> float:
    """The outer steps the run is set to take: its epochs' batches, or max_steps where fewer
    (inf where neither bounds it)."""
    steps = math.inf
    if trainer.max_epochs > 0:
        steps = trainer.max_epochs * trainer.num_training_batches / trainer.accumulate_grad_batches
    if trainer.max_steps > 0:
        steps = min(steps, trainer.max_steps)
    return steps


class ValidateAtEnd(Callback):
    """Validates after the run's last step, so that a run which ends between validations (at
    max_steps inside an epoch, or at the end of its epochs with eval_frequency steps apart)
    tests a checkpoint its meta-val score chose. Lightning validates at a step where the run
    is asked to stop (as max_time, the CPU time limit and early stopping ask), and only once
    where a validation was due there anyway."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        last_epoch = 0 < trainer.max_epochs <= trainer.current_epoch + 1
        if (0 < trainer.max_steps <= trainer.global_step
                or last_epoch and batch_idx + 1 >= trainer.num_training_batches):
            trainer.should_stop = True


class LoggingCadence(Callback):
    """trainer.log_every_n_steps for a config that leaves it null: LOG_EVERY_N_STEPS, or fewer
    so that a short run's loss curve has CURVE_POINTS points (a 3-step run logs every step).

    It is set when training starts, once the epochs' length is known, from the whole run's
    planned length, so that a resumed run logs at the steps the uninterrupted one did; until
    then it is 1, which keeps Lightning from warning about a run shorter than its interval."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            trainer.log_every_n_steps = 1

    def on_train_start(self, trainer, pl_module) -> None:
        steps = planned_steps(trainer)
        trainer.log_every_n_steps = (LOG_EVERY_N_STEPS if math.isinf(steps) else
                                     min(LOG_EVERY_N_STEPS, max(1, int(steps) // CURVE_POINTS)))


def time_left(trainer) -> float | None:
    """Seconds of trainer.max_time left (None without one)."""
    timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
    return None if timer is None else timer.time_remaining()


class TasksPerSecondProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar plus a `tasks/s` postfix: `tasks_per_batch` (the meta-batch size)
    times the training batches done this epoch, over the wall time since the epoch started
    (`examples/s` where the training batches are labelled examples, `ExampleBatch`). Updated at
    each training batch only, so validation time does not count.

    Its epoch ends where the run does: at max_steps, and with max_time after the batches that
    the time left allows at the rate measured so far, so that its ETA is the run's."""

    def __init__(self, tasks_per_batch: int, **kwargs):
        super().__init__(**kwargs)
        self.tasks_per_batch = tasks_per_batch
        self.items_per_second: float | None = None
        self.batches_per_second: float | None = None
        self.unit = "tasks/s"

    def start_counting(self) -> None:
        self.counting_since, self.items_done, self.batches_done = perf_counter(), 0, 0
        self.items_per_second = self.batches_per_second = None

    def on_train_start(self, *args) -> None:
        super().on_train_start(*args)
        self.start_counting()  # a run resumed inside an epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, *args) -> None:
        super().on_train_epoch_start(*args)  # its length at the last epoch's rate
        self.start_counting()

    @property
    def total_train_batches(self) -> int | float:
        return self.epoch_length(self.trainer, done=0)  # asked as an epoch starts

    def epoch_length(self, trainer, done: int) -> int | float:
        """The training batches of this epoch, `done` of them done: the epoch's, or fewer where
        max_steps or max_time (at the measured rate) ends the run first."""
        length = trainer.num_training_batches
        if trainer.max_steps > 0:
            steps_left = trainer.max_steps - trainer.global_step
            length = min(length, done + steps_left * trainer.accumulate_grad_batches)
        seconds = time_left(trainer)
        if seconds is not None and self.batches_per_second:
            length = min(length, done + math.ceil(self.batches_per_second * max(seconds, 0.0)))
        return length

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, ExampleBatch):  # an algorithm that pre-trains on examples
            self.unit, self.items_done = "examples/s", self.items_done + len(batch.x)
        else:
            self.items_done += self.tasks_per_batch
        self.batches_done += 1
        elapsed = perf_counter() - self.counting_since
        self.items_per_second = self.items_done / elapsed
        self.batches_per_second = self.batches_done / elapsed
        self.train_progress_bar.total = convert_inf(self.epoch_length(trainer, batch_idx + 1))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        if self.items_per_second is not None:
            metrics[self.unit] = f"{self.items_per_second:.1f}"
        return metrics
