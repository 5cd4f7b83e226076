"""The run engine: the one place that fits a built algorithm and tests it.

train.py (metalearn/run/training.py), the Python API's `MetaLearner.fit`, eval.py
(metalearn/run/evaluate.py) and compare.py (metalearn/run/compare.py) build with
metalearn/run/build.py, fit with `fitting` and test with `meta_test_scores`, so a run's sequence
(monitor, trainer, config files, loggers, the fit and its one-line stops, the test loop) is written
once. The Python API's `meta_train_step` takes single steps outside Lightning's loop but builds
with the same builder. Every trainer is made here: with the run's cadence (validation every
`eval_frequency` outer steps where it is set and after the last step, a loss curve of several
points for a short run: metalearn/run/progress.py), and without Lightning's lines that are not
the user's business (`LIGHTNING_NOISE`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from metalearn.algorithms.base import EpisodicModule
from metalearn.data.datamodule import EpisodicDataModule
from metalearn.errors import NonFiniteError, UserError
from metalearn.evaluation.protocol import Augmentation, MetaTest
from metalearn.files import write_text
from metalearn.paths import component_name
from metalearn.run.build import instantiate_all, instantiate_trainer
from metalearn.run.checkpoints import AtomicCheckpointIO, RunState
from metalearn.run.config_tree import write_config_tree
from metalearn.run.loggers import CSVLogger, end_wandb_runs, log_config
from metalearn.run.progress import LoggingCadence, ValidateAtEnd

if TYPE_CHECKING:  # meta-RL's modules import gymnasium, which few-shot runs do without
    from metalearn.algorithms.meta_rl import MetaRLModule
    from metalearn.data.rl_datamodule import EnvDataModule

#: the starts of Lightning's lines that are not the user's business: adverts for its cloud
#: products, and a TPU that the machine does not have (the GPU line says where the run went)
LIGHTNING_NOISE = ("💡 Tip:", "TPU available: False")
#: the loggers of Lightning's rank-zero lines and device lines, under both of its package names
#: (learn2learn imports pytorch_lightning, whose rank-zero logger then speaks for both)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                     "lightning.pytorch.accelerators.cuda")


class LightningNoise(logging.Filter):
    """Drops the records that start with one of `starts` (LIGHTNING_NOISE)."""

    def __init__(self, starts: tuple[str, ...] = LIGHTNING_NOISE):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_lightning() -> None:
    """Keeps LIGHTNING_NOISE out of the output, and the FutureWarning that torch raises against
    Lightning 2.6's own use of its pytree (the user can do nothing about either)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(known, LightningNoise) for known in logger.filters):
            logger.addFilter(LightningNoise())
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            FutureWarning)
    # TRPO (maml_rl, pretrained_rl) updates the weights without a torch optimiser
    warnings.filterwarnings("ignore", r"`LightningModule.configure_optimizers` returned `None`")


def resolve_monitor(cfg: DictConfig, model: EpisodicModule) -> None:
    """Sets `monitor` and `monitor_mode` left null to the algorithm's own score, then checks
    that the monitor is one of its meta-val scores."""
    if cfg.get("monitor") is None:
        cfg.monitor = model.validation_metrics[0]
    if cfg.get("monitor_mode") is None:
        cfg.monitor_mode = "min" if cfg.monitor.endswith("mse") else "max"
    if cfg.monitor_mode not in ("min", "max"):
        raise UserError(f"monitor_mode={cfg.monitor_mode!r} must be max or min")
    if cfg.monitor not in model.validation_metrics:
        raise UserError(f"monitor={cfg.monitor!r} is not a meta-validation score of "
                        f"{component_name(cfg.algorithm)}; use one of: "
                        f"{', '.join(model.validation_metrics)}")


def make_trainer(cfg: DictConfig, resolved: dict, input_record: dict,
                 started: float | None = None) -> L.Trainer:
    """The config's Lightning Trainer with its callbacks and loggers; checkpoints carry `resolved`,
    the config that rebuilds the model, and the run's state. The run validates every
    `eval_frequency` outer steps where it is set (`cadence_arguments`) and once more at its end
    (`ValidateAtEnd`), and logs as densely as its length needs where trainer.log_every_n_steps
    is null (`LoggingCadence`). A setting Lightning refuses is a UserError in one line."""
    quiet_lightning()
    callbacks = instantiate_all(cfg.get("callbacks")) + [RunState(resolved, input_record, started),
                                                         ValidateAtEnd()]
    if cfg.trainer.get("log_every_n_steps") is None:
        callbacks.append(LoggingCadence())
    return instantiate_trainer(cfg.trainer, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                               logger=instantiate_all(cfg.get("logger")) or False,
                               **cadence_arguments(cfg.trainer))


def cadence_arguments(trainer: DictConfig) -> dict:
    """Trainer arguments that the cadence keys imply: a whole number of steps between
    validations (`val_check_interval`, which is `eval_frequency`) counts outer steps across
    epochs, not batches within each one."""
    if isinstance(trainer.get("val_check_interval"), int):
        return {"check_val_every_n_epoch": None}
    return {}


def stop_message(error: NonFiniteError, cfg: DictConfig, trainer: L.Trainer) -> str:
    """The non-finite error, the last checkpoint whose meta-val score was finite, and what to
    change."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.best_model_path:
        kept = (f"The last checkpoint with a finite meta-val score is "
                f"{Path(callback.best_model_path).relative_to(Path(cfg.paths.output_dir))} "
                f"({cfg.monitor} {callback.best_model_score.item():.4f})")
    else:
        kept = "No checkpoint had a finite meta-val score"
    rates = [f"{key}={value}" for key, value in cfg.algorithm.items()
             if key in ("outer_lr", "inner_lr") and value is not None]
    # targets in their own units (large ones) make a regression's loss and gradients as large
    raw_targets = (trainer.lightning_module.task_type == "regression"
                   and (cfg.get("dataset") or {}).get("standardize_target") is False)
    standardize = (", with dataset.standardize_target=true (the targets are in their own "
                   "units)," if raw_targets else "")
    return (f"{error}. {kept}. Start a new run with smaller learning rates "
            f"({', '.join(f'algorithm.{rate}' for rate in rates)}){standardize} or with "
            "trainer.gradient_clip_val set: resuming would keep the optimiser's learning rate")


@contextmanager
def fitting(cfg: DictConfig, model: EpisodicModule, datamodule: EpisodicDataModule,
            ckpt_path: Path | None = None, run_state: dict | None = None,
            started: float | None = None, show_config: bool = True) -> Iterator[L.Trainer]:
    """Fits `model` on `datamodule` as the config says and yields the trainer (to test with);
    its W&B runs end when the block does, whether it succeeds or fails.

    Before fitting: the monitor resolved, config.yaml and config_tree.log written into the run
    directory (the tree also printed with `show_config`), the config handed to every logger, and
    a resumed run's CSV history kept (`run_state`, from its checkpoint). A non-finite loss or
    score, or a SIGTERM, stops the fit with one line.
    """
    resolve_monitor(cfg, model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    output_dir = Path(cfg.paths.output_dir)
    trainer = make_trainer(cfg, resolved, datamodule.tasks.input_record(), started)
    try:
        write_text(output_dir / "config.yaml", OmegaConf.to_yaml(resolved))
        write_config_tree(cfg, output_dir / "config_tree.log", show_config)
        if run_state and run_state.get("csv_rows") is not None:
            for logger in trainer.loggers:
                if isinstance(logger, CSVLogger):
                    logger.keep_rows(run_state["csv_rows"], run_state.get("pending_row"))
        log_config(trainer.loggers, resolved)
        try:
            trainer.fit(model, datamodule=datamodule,
                        ckpt_path=None if ckpt_path is None else str(ckpt_path))
        except NonFiniteError as error:
            raise UserError(stop_message(error, cfg, trainer)) from None
        except SIGTERMException:  # Lightning's graceful stop would exit with status 0
            raise UserError(f"stopped by SIGTERM after {trainer.global_step} outer steps, before "
                            f"the meta-test; resume with ckpt_path=last (in {output_dir})") from None
        yield trainer
    finally:
        end_wandb_runs(trainer.loggers)


def test_trainer(cfg: DictConfig, output_dir: Path) -> L.Trainer:
    """A trainer that only tests (eval.py, compare.py): the config's devices and precision, no
    loggers, callbacks or progress bar."""
    quiet_lightning()
    return instantiate_trainer(cfg.trainer, logger=False, callbacks=[],
                               default_root_dir=str(output_dir), enable_progress_bar=False)


def meta_test_scores(trainer: L.Trainer, model: EpisodicModule, datamodule: EpisodicDataModule,
                     steps: int | None = None,
                     augmentation: Augmentation | None = None) -> tuple[dict[str, float], Tensor]:
    """Tests the model on the data module's test episodes by the evaluation protocol (with
    `steps` inner steps and test-time `augmentation` where given): the summary (test/acc,
    test/acc_ci95, test/episodes, the extra scores) and each episode's score, in episode order;
    an MSE in the targets' own units (a family that standardised them reports its scale), and
    the family's own metrics of each episode (TaskFamily.episode_metrics)."""
    meta_test = MetaTest(model, steps, augmentation,
                         score_scale=datamodule.tasks.target_scale ** 2,
                         metrics=datamodule.tasks.episode_metrics)
    trainer.test(meta_test, datamodule=datamodule, verbose=False)
    return meta_test.results, meta_test.per_episode


def rl_test_returns(trainer: L.Trainer, model: MetaRLModule, datamodule: EnvDataModule,
                    steps: int | None = None) -> Tensor:
    """Each held-out test task's average return before adaptation and after each of `steps`
    policy-gradient steps (None: the model's test_inner_steps): [tasks, steps + 1]
    (MetaRLModule.test_step)."""
    own_steps = model.test_inner_steps
    model.test_inner_steps = own_steps if steps is None else steps
    try:
        trainer.test(model, datamodule=datamodule, verbose=False)
    finally:
        model.test_inner_steps = own_steps
    return torch.cat(model.test_returns)
