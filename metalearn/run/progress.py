"""The training progress bar with the meta-training throughput in tasks per second (examples
per second for the algorithms that pre-train on examples)."""

from __future__ import annotations

from time import perf_counter

from lightning.pytorch.callbacks import TQDMProgressBar

from metalearn.data.episodes import ExampleBatch


class TasksPerSecondProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar plus a `tasks/s` postfix: `tasks_per_batch` (the meta-batch size)
    times the training batches done this epoch, over the wall time since the epoch started
    (`examples/s` where the training batches are labelled examples, `ExampleBatch`). Updated at
    each training batch only, so validation time does not count."""

    def __init__(self, tasks_per_batch: int, **kwargs):
        super().__init__(**kwargs)
        self.tasks_per_batch = tasks_per_batch
        self.items_per_second: float | None = None
        self.unit = "tasks/s"

    def start_counting(self) -> None:
        self.counting_since, self.items_done, self.items_per_second = perf_counter(), 0, None

    def on_train_start(self, *args) -> None:
        super().on_train_start(*args)
        self.start_counting()  # a run resumed inside an epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, *args) -> None:
        super().on_train_epoch_start(*args)
        self.start_counting()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, ExampleBatch):  # an algorithm that pre-trains on examples
            self.unit, self.items_done = "examples/s", self.items_done + len(batch.x)
        else:
            self.items_done += self.tasks_per_batch
        self.items_per_second = self.items_done / (perf_counter() - self.counting_since)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        if self.items_per_second is not None:
            metrics[self.unit] = f"{self.items_per_second:.1f}"
        return metrics
