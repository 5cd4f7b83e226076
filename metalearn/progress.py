"""The training progress bar with the meta-training throughput in tasks per second."""

from __future__ import annotations

from time import perf_counter

from lightning.pytorch.callbacks import TQDMProgressBar


class TasksPerSecondProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar plus a `tasks/s` postfix: `tasks_per_batch` (the meta-batch size)
    times the training batches done this epoch, over the wall time since the epoch started.
    Updated at each training batch only, so validation time does not count."""

    def __init__(self, tasks_per_batch: int, **kwargs):
        super().__init__(**kwargs)
        self.tasks_per_batch = tasks_per_batch
        self.tasks_per_second: float | None = None

    def start_counting(self) -> None:
        self.counting_since, self.batches_done, self.tasks_per_second = perf_counter(), 0, None

    def on_train_start(self, *args) -> None:
        super().on_train_start(*args)
        self.start_counting()  # a run resumed inside an epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, *args) -> None:
        super().on_train_epoch_start(*args)
        self.start_counting()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches_done += 1
        elapsed = perf_counter() - self.counting_since
        self.tasks_per_second = self.tasks_per_batch * self.batches_done / elapsed
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        if self.tasks_per_second is not None:
            metrics["tasks/s"] = f"{self.tasks_per_second:.1f}"
        return metrics
