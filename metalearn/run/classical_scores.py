"""The classical baselines of a run (`baselines`: the global mean, a mixed model, a folded-in
matrix factorisation, ...; metalearn/evaluation/classical.py), scored on exactly the run's test
episodes, beside the meta-learner, with the paired difference of its MSE to each.

A recommender or a statistician judges a meta-learner against the tool they already use, on the
same new users or groups: each baseline is fitted on the meta-train rows, adapts to each test
episode's support rows and predicts its query rows, which come from the data module's test
episodes (`EpisodicDataModule.test_episode_rows`), so every difference is paired episode by
episode. train.py and eval.py add the record to results.json (`baselines`, `best_baseline`) and
to results.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from metalearn.data.datamodule import EpisodicDataModule
from metalearn.data.episodes import gather
from metalearn.data.grouped import GroupedRegression
from metalearn.data.task_family import TaskFamily
from metalearn.errors import UserError
from metalearn.evaluation.classical import BASELINES, ClassicalBaseline, baseline_predictions
from metalearn.evaluation.statistics import mean_and_ci95, paired_difference
from metalearn.paths import family_choice

log = logging.getLogger(__name__)


def configured_baselines(cfg: DictConfig, tasks: TaskFamily) -> list[ClassicalBaseline]:
    """`baselines`, a mapping of baseline names to their settings ({} for the defaults), built;
    refused in one line where a name is unknown, a setting wrong, or the dataset's tasks are not
    groups of rows."""
    chosen = cfg.get("baselines") or {}
    if not OmegaConf.is_dict(chosen) and not isinstance(chosen, Mapping):
        raise UserError(f"baselines={chosen!r} must map baseline names to their settings, e.g. "
                        "baselines={global_mean: {}, mixed_model: {random_slopes: [Days]}}")
    if chosen and not isinstance(tasks, GroupedRegression):
        raise UserError(f"baselines ({', '.join(chosen)}) are scored on regression tasks that "
                        f"are groups of rows; {family_choice(cfg)} has none: "
                        "set baselines=null (or use dataset=features_regression or movielens)")
    built = []
    for name, settings in chosen.items():
        if name not in BASELINES:
            raise UserError(f"baselines.{name} is not a baseline; the baselines are: "
                            f"{', '.join(BASELINES)}")
        settings = OmegaConf.to_container(settings) if OmegaConf.is_config(settings) else settings
        if settings is None:
            settings = {}
        if not isinstance(settings, Mapping):
            raise UserError(f"baselines.{name}={settings!r} must be a mapping of its settings "
                            "({} for the defaults)")
        try:
            baseline = BASELINES[name](**settings)
        except TypeError as error:
            raise UserError(f"baselines.{name}: {error}") from None
        if baseline.needs_items:
            baseline.require_items(tasks.rows("train"))  # refuses rows that are not items
        baseline.check(tasks.feature_names)
        if baseline.linear_in_features and tasks.categories:
            raise UserError(f"baselines.{name} is linear in the features, and "
                            "dataset.categorical_encoding=embedding feeds categorical columns as "
                            "integer codes; use categorical_encoding=onehot for it, or leave it "
                            "out of baselines")
        built.append(baseline)
    return built


def baselines_record(baselines: list[ClassicalBaseline], datamodule: EpisodicDataModule,
                     model_mse: Tensor) -> dict:
    """Each baseline's scores on the test episodes (its MSE and the family's metrics, in the
    targets' own units, with 95% intervals), the paired difference of the model's MSE to it
    (negative: the model errs less), and the baseline with the lowest MSE (`best_baseline`).
    `model_mse`: the model's MSE of each test episode, in episode order."""
    tasks: GroupedRegression = datamodule.tasks
    train, test = tasks.rows("train"), tasks.rows("test")
    rows, k_shot = datamodule.test_episode_rows(), datamodule.k_shot
    targets = gather(test.targets, rows[:, k_shot:])
    record = {}
    for baseline in baselines:
        baseline.fit(train, tasks.feature_names, k_shot)
        predictions = baseline_predictions(baseline, test, rows, k_shot)
        mse = (predictions - targets).square().flatten(1).mean(1) * tasks.target_scale ** 2
        scores = {"mse": mse, **tasks.episode_metrics(predictions, targets)}
        entry = {}
        for name, values in scores.items():
            mean, ci95 = mean_and_ci95(values)
            entry |= {f"test_{name}": mean, f"test_{name}_ci95": ci95}
        entry["model_minus_baseline_mse"] = paired_difference(model_mse, mse)
        record[baseline.name] = entry
    return record


def best_baseline(record: Mapping) -> str | None:
    """The baseline with the lowest test MSE; None without baselines."""
    return min(record, key=lambda name: record[name]["test_mse"], default=None)


def baseline_lines(record: Mapping) -> list[str]:
    """Lines for the terminal: each baseline's MSE and the model's paired difference to it."""
    lines = []
    for name, entry in record.get("baselines", {}).items():
        paired = entry["model_minus_baseline_mse"]
        ci95 = paired["difference_ci95"]
        lines.append(f"  baseline {name}: MSE {entry['test_mse']:#.4g}"
                     + ("" if entry["test_mse_ci95"] is None else
                        f" +- {entry['test_mse_ci95']:#.4g}")
                     + f"; model - baseline {paired['difference']:+#.4g}"
                     + ("" if ci95 is None else f" +- {ci95:#.4g}"))
    return lines


def add_baselines(record: dict, baselines: list[ClassicalBaseline],
                  datamodule: EpisodicDataModule, model_mse: Tensor) -> None:
    """Adds `baselines` and `best_baseline` to a results record (nothing without baselines)."""
    if not baselines:
        return
    scores = baselines_record(baselines, datamodule, torch.as_tensor(model_mse))
    record["baselines"], record["best_baseline"] = scores, best_baseline(scores)
