"""The run's learning curves (plots/learning_curves.png in its directory) and the metric history
they are drawn from; eval.py's plots of the meta-test score against the number of inner steps
(plots/adaptation_speed.png) and against the shot (plots/accuracy_by_shot.png), drawn from its
results record. Each figure's title names the algorithm, the dataset and the task shape; a score
without an interval (one episode) is drawn without its band."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from metalearn.evaluation.results import score_name, task_text
from metalearn.files import atomic_write

Row = dict[str, float]  # one logging event: "step" and the metrics logged then


class MetricHistory(Callback):
    """Collects the training and meta-val metrics by step: the learning curves' source when no CSV
    logger writes metrics.csv (debug=fdr, logger=tensorboard, ~logger)."""

    def __init__(self):
        self.rows: list[Row] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record(trainer, "train/")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.record(trainer, "val/")

    def record(self, trainer: L.Trainer, prefix: str) -> None:
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()
                   if key.startswith(prefix)}
        self.rows.append({"step": trainer.global_step, **metrics})


def csv_rows(path: Path) -> list[Row]:
    """metrics.csv as rows, each with only the metrics it holds."""
    with path.open(newline="") as file:
        return [{key: float(value) for key, value in row.items() if value != ""}
                for row in csv.DictReader(file)]


def logged_rows(trainer: L.Trainer) -> list[Row]:
    """The CSV logger's metrics.csv when it was written, else what MetricHistory collected."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger) and (Path(logger.log_dir) / "metrics.csv").is_file():
            return csv_rows(Path(logger.log_dir) / "metrics.csv")
    history = next((c for c in trainer.callbacks if isinstance(c, MetricHistory)), None)
    return history.rows if history else []


def series(rows: list[Row], *keys: str) -> list[tuple[float, ...]]:
    """(step, *values) for each row holding all of `keys`."""
    return [(row["step"], *(row[key] for key in keys)) for row in rows
            if all(key in row for key in keys)]


def not_logged(axes) -> None:
    axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes)


def band(means: Sequence[float], ci95: Sequence[float | None]) -> tuple[list[float], list[float]]:
    """The lower and upper edges of the 95% band; a gap (NaN) where a mean has no interval."""
    half = [math.nan if c is None else c for c in ci95]
    return [m - c for m, c in zip(means, half)], [m + c for m, c in zip(means, half)]


def plot_learning_curves(rows: list[Row], path: Path, title: str = "") -> None:
    """Training loss, and the meta-val score with its 95% confidence band, against the step,
    under `title` (the algorithm, the dataset and the task shape)."""
    score = next((key for row in rows for key in row
                  if key.startswith("val/") and not key.endswith("_ci95")), "val/score")
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)  # renders to PNG without pyplot or a display
    if title:
        figure.suptitle(title)
    loss_axes, score_axes = figure.subplots(1, 2)
    loss = series(rows, "train/loss")
    if loss:
        loss_axes.plot(*zip(*loss), marker="." if len(loss) < 20 else None)  # few: show points
    else:  # a run shorter than trainer.log_every_n_steps logs no training loss to metrics.csv
        not_logged(loss_axes)
    loss_axes.set(title="meta-training loss", xlabel="step", ylabel="train/loss")
    scored = series(rows, score)
    if scored:
        steps, means = zip(*scored)
        # one validation episode logs no interval
        ci95 = [row.get(f"{score}_ci95") for row in rows if score in row]
        score_axes.plot(steps, means, marker="o", label=score)
        score_axes.fill_between(steps, *band(means, ci95), alpha=0.3, label="95% CI")
        score_axes.legend()
    else:
        not_logged(score_axes)
    score_axes.set(title="meta-validation", xlabel="step", ylabel=score)
    with atomic_write(path) as partial:
        figure.savefig(partial, dpi=100, format="png")


def write_learning_curves(output_dir: Path, trainer: L.Trainer, title: str = "") -> Path:
    """Writes plots/learning_curves.png into the run dir from what the run logged, under `title`
    (`metalearn.evaluation.results.title` of the run's record); returns it."""
    path = output_dir / "plots" / "learning_curves.png"
    plot_learning_curves(logged_rows(trainer), path, title)
    return path


Point = tuple[float, float, float | None]  # x, the mean score, its 95% interval's half-width
SCORE_LABELS = {"acc": "meta-test accuracy", "mse": "meta-test MSE", "return": "average return"}


def point(x: float, entry: Mapping, name: str) -> Point:
    return x, entry[f"test_{name}"], entry[f"test_{name}_ci95"]


def adaptation_speed_series(result: Mapping) -> dict[str, list[Point]]:
    """For each shot evaluated with eval.inner_steps, "<k>-shot": (inner steps, score, CI)."""
    name = score_name(result)
    return {f"{shot['k_shot']}-shot": [point(e["inner_steps"], e, name) for e in shot["by_steps"]]
            for shot in result.get("by_shot", [result]) if "by_steps" in shot}


def shot_series(result: Mapping) -> list[Point]:
    """(shot, score, CI) for each shot of eval.shots; empty for one shot."""
    name = score_name(result)
    return [point(shot["k_shot"], shot, name) for shot in result.get("by_shot", [])]


def plot_scores(lines: Mapping[str, list[Point]], path: Path, xlabel: str, score: str,
                title: str) -> None:
    """Each line's score against x, with its 95% confidence band."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for label, points in lines.items():
        xs, means, ci95 = zip(*points)
        axes.plot(xs, means, marker="o", label=label)
        axes.fill_between(xs, *band(means, ci95), alpha=0.25)
    axes.set(title=title, xlabel=xlabel, ylabel=f"{SCORE_LABELS[score]} (95% CI band)")
    axes.set_xticks(sorted({x for points in lines.values() for x, _, _ in points}))
    axes.legend()
    with atomic_write(path) as partial:
        figure.savefig(partial, dpi=100, format="png")


def write_eval_plots(output_dir: Path, result: Mapping) -> list[Path]:
    """Writes plots/adaptation_speed.png (with eval.inner_steps) and plots/accuracy_by_shot.png
    (with two or more eval.shots) from eval.py's results record; returns the paths written."""
    score = score_name(result)
    title = f"{result['algorithm']} on {task_text(result, shot=False)}"
    written = []
    by_steps = adaptation_speed_series(result)
    if by_steps:
        written.append(output_dir / "plots" / "adaptation_speed.png")
        plot_scores(by_steps, written[-1], "inner steps at test time", score,
                    f"{title}: adaptation speed")
    by_shot = shot_series(result)
    if by_shot:
        written.append(output_dir / "plots" / "accuracy_by_shot.png")
        plot_scores({f"{result['test_episodes']} test episodes per shot": by_shot}, written[-1],
                    "shots (support examples per class)", score, f"{title}: score by shot")
    return written
