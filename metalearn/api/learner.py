"""`MetaLearner`, one algorithm built from the same config as `python train.py
algorithm=<name>`, and `AdaptedModel`, a learner adapted to one task.

A thin face over the run engine: it composes the config (metalearn/run/compose.py), builds the
same Lightning module (metalearn/run/build.py), fits with the engine's `fitting`
(metalearn/run/engine.py), and reads and writes train.py's checkpoints.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from metalearn.api.inputs import InputChecks, LabelledSet
from metalearn.api.sampler import TaskSampler
from metalearn.data.episodes import Task, TaskBatch
from metalearn.data.task_family import TaskFamily
from metalearn.errors import UserError, check_whole_number
from metalearn.paths import component_name
from metalearn.run.allocator import tune_malloc
from metalearn.run.build import USER_BACKBONE, build_datamodule, instantiate_run
from metalearn.run.checkpoints import CONFIG_KEY, load_checkpoint, save_checkpoint
from metalearn.run.compose import (
    algorithm_name,
    apply_settings,
    checked_choice,
    compose_config,
    default_output_dir,
    upgrade_stored_config,
)
from metalearn.run.config_check import check_episode_fits, validate
from metalearn.run.engine import RANK_ZERO_LOGGERS, LightningNoise, fitting
from metalearn.run.engine import quiet_lightning as engine_quiet_lightning

#: what Lightning's trainers log that is none of an API user's business beyond the engine's
#: LIGHTNING_NOISE: the devices it found (train.py's log keeps them)
DEVICE_LINES = ("GPU available:", "HPU available:", "LOCAL_RANK:")


class AdaptedModel:
    """A model adapted to one task's support set.

    Calling it gives class scores [Q, N] (regression: outputs); `predict` gives the classes, and
    `evaluate` the accuracy (regression: the mean squared error).
    """

    def __init__(self, learner: MetaLearner, predictor: Callable[[Tensor], Tensor],
                 classes: int | None):
        self.learner, self.predictor, self.classes = learner, predictor, classes

    def __call__(self, x: Any) -> Tensor:
        x = self.learner.inputs(x, "x")
        with evaluating(self.learner.module), torch.no_grad():
            return self.predictor(x)

    def predict(self, x: Any) -> Tensor:
        outputs = self(x)
        return outputs.argmax(-1) if self.learner.module.task_type == "classification" else outputs

    def evaluate(self, x: Any, y: Any) -> float:
        x, y = self.learner.labelled_set((x, y), "query set", classes=self.classes)
        return self.learner.module.episode_score(self(x).unsqueeze(0), y.unsqueeze(0)).item()


class MetaLearner(InputChecks):
    """One algorithm, built from the same config as `python train.py algorithm=<name>`.

    Args:
        algorithm: a config of configs/algorithm/ (or an alias: "prototypical"), or of the
            user's own config directory given as `overrides=["hydra.searchpath=[file://DIR]"]`
            (DIR/algorithm/<name>.yaml, as train.py finds it; its `_target_` must be importable).
        model: a user's `nn.Module`. For algorithms that adapt a whole network (MAML, FOMAML,
            Meta-SGD, Reptile, the LSTM meta-learner) it is the whole learner and must output one
            value per class (pass `output_layer=True` to add a linear layer); for the others it
            is the embedding (the backbone), ANIL's included. None: the config's backbone.
        dataset: the dataset config the model is built for (its input shape and task type),
            of configs/dataset/ or of the search path in `overrides`.
        overrides: Hydra overrides, for keys no flat name reaches ("backbone.hidden_channels=32"),
            and for the search path of the user's own algorithms, datasets and backbones
            ("hydra.searchpath=[file://DIR]" or "[pkg://package.configs]").
        output_dir: where `fit` writes checkpoints and logs (default: a new run directory
            under outputs/runs/, as train.py's).
        **hyperparameters: settings by name, as the config calls them: the algorithm's
            (`inner_lr`, `inner_steps`, `first_order`, `distance`, `embedding_dim`,
            `meta_batch_size`, `outer_lr`, ...), the episode's (`n_way`, `k_shot`, `query_size`,
            `num_tasks`, ...) and the run's (`seed`, `num_epochs`, `eval_frequency`,
            `save_frequency`). An unknown name is an error listing the valid ones.

    Building seeds torch with the config's `seed`, as train.py does before it builds. Building
    (or loading) a learner also tunes glibc malloc for PyTorch, as the entry points do
    (metalearn/run/allocator.py; METALEARN_SYSTEM_MALLOC=1 turns it off); `import metalearn`
    alone does not.
    """

    def __init__(self, algorithm: str = "protonet", model: nn.Module | None = None, *,
                 dataset: str = "omniglot", overrides: Iterable[str] = (),
                 output_dir: str | os.PathLike | None = None, **hyperparameters: Any):
        overrides = list(overrides)
        cfg = compose_config([f"algorithm={algorithm_name(algorithm, overrides)}",
                              f"dataset={checked_choice('dataset', dataset, overrides)}",
                              *overrides], output_dir)
        if model is not None:
            with open_dict(cfg):
                cfg.backbone = {"_target_": USER_BACKBONE, "model": qualified_name(model),
                                "flatten": cfg.backbone.get("flatten", True)}
        if model is not None and get_class(cfg.algorithm._target_).user_network_is_learner:
            hyperparameters = {"output_layer": False, **hyperparameters}
        apply_settings(cfg, hyperparameters, what="hyperparameter")
        L.seed_everything(cfg.seed, verbose=False)
        self.setup(cfg, model)

    def setup(self, cfg: DictConfig, model: nn.Module | None) -> None:
        tune_malloc()  # as the entry points do, before the model's tensors exist
        validate(cfg)
        datamodule, self.module = instantiate_run(cfg, model)
        self.config: DictConfig = cfg
        self.tasks: TaskFamily = datamodule.tasks
        self.optimizer = self.module.make_optimizer()
        self.steps_taken = 0
        self.fabric: L.Fabric | None = None  # set up by the first meta_train_step
        self.said_steps_ignored = False  # that a one-pass algorithm ignores n_steps, said once

    @property
    def algorithm(self) -> str:
        return component_name(self.config.algorithm)

    def __repr__(self) -> str:
        return (f"MetaLearner(algorithm={self.algorithm!r}, "
                f"dataset={component_name(self.config.dataset)!r}, "
                f"steps_taken={self.steps_taken})")

    # Meta-training ---------------------------------------------------------------------------
    def meta_train_step(self, tasks: TaskBatch | Task | Sequence[TaskBatch | Task]) -> float:
        """One outer update on a batch of tasks (`TaskSampler.sample`); returns the loss.

        Runs the algorithm's own training step through Lightning Fabric, with the configured
        optimiser, the trainer's precision and `gradient_clip_val`, as train.py's Trainer does;
        learning-rate schedules (Reptile's annealing too) run in `fit`, which has an end to
        schedule towards.
        """
        batch = self.task_batch(tasks, "tasks")
        fabric_module, optimizer = self.fabric_setup()
        self.module.train()
        self.module.fabric = self.fabric  # so that its self.log calls go to Fabric
        try:
            loss = fabric_module.training_step(batch, self.steps_taken)
            optimizer.zero_grad()
            self.fabric.backward(loss)
            clip = self.config.trainer.get("gradient_clip_val")
            if clip:
                self.fabric.clip_gradients(fabric_module, optimizer, max_norm=clip)
            optimizer.step()
        finally:
            self.module.fabric = None  # a later fit attaches the module to a Trainer
        self.steps_taken += 1
        return loss.item()

    def fabric_setup(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The module and optimiser under a Fabric for the module's device and the trainer's
        precision (set up once, and again after `to`)."""
        if self.fabric is None:
            device = self.device
            self.fabric = L.Fabric(accelerator=device.type, devices=[device.index or 0]
                                   if device.type == "cuda" else 1,
                                   precision=self.config.trainer.precision)
            self.fabric_objects = self.fabric.setup(self.module, self.optimizer,
                                                    move_to_device=False)
        return self.fabric_objects

    def fit(self, sampler: TaskSampler, steps: int | None = None,
            epochs: int | None = None) -> dict[str, Any]:
        """Meta-trains with a Lightning Trainer, as train.py does, on `sampler`'s tasks.

        `steps` outer updates in all, split into `epochs` epochs (default 1), each followed by
        validation on the dataset's meta-val split and a checkpoint (the best by meta-val score
        and last.ckpt, in output_dir/checkpoints). Without `steps`, the config's
        `num_epochs` epochs of `num_tasks` tasks (for the fine-tuning baselines, steps of
        pre-training, and epochs of at most a pass over the meta-train examples). The Trainer
        runs its own optimiser and the configured learning-rate schedule. Returns the last logged metrics and the checkpoints.
        """
        if not isinstance(sampler, TaskSampler) or sampler.split != "train":
            raise UserError("fit takes a TaskSampler of the meta-train split (split='train')")
        self.check_tasks_fit(sampler.tasks, sampler.n_way)
        cfg = self.config.copy()
        with open_dict(cfg):
            cfg.dataset = sampler.dataset_config
            cfg.seed = cfg.episode.seed = sampler.seed
            for key in ("n_way", "k_shot", "query_size"):
                cfg.episode[key] = getattr(sampler, key)
            cfg.episode.train_n_way = cfg.episode.train_query_size = None
            if epochs is not None:
                cfg.num_epochs = check_whole_number("epochs", epochs)
            if steps is not None:
                check_whole_number("steps", steps)
                cfg.num_epochs = epochs or 1
                if steps % cfg.num_epochs:
                    raise UserError(f"steps={steps} is not a multiple of epochs={cfg.num_epochs}")
                if self.module.trains_on_examples:  # an epoch is a pass: stop inside it
                    cfg.trainer.limit_train_batches = steps // cfg.num_epochs
                else:
                    cfg.episode.num_tasks = steps // cfg.num_epochs * cfg.episode.meta_batch_size
        validate(cfg)
        check_episode_fits(cfg, sampler.tasks)
        datamodule = build_datamodule(cfg, sampler.tasks, self.module)
        per_epoch = cfg.trainer.get("limit_train_batches")
        if per_epoch and per_epoch > datamodule.steps_per_epoch:
            raise UserError(f"steps={steps} in epochs={cfg.num_epochs} is {per_epoch} steps an "
                            f"epoch, more than the {datamodule.steps_per_epoch} batches of a pass "
                            f"over the meta-train examples; use more epochs")
        with quiet_lightning(), fitting(cfg, self.module, datamodule,
                                        show_config=False) as trainer:
            pass
        self.config = cfg
        self.steps_taken += trainer.global_step
        checkpoints = trainer.checkpoint_callback
        return {
            **{name: value.item() for name, value in trainer.callback_metrics.items()},
            "best_checkpoint": checkpoints.best_model_path if checkpoints else None,
            "last_checkpoint": checkpoints.last_model_path if checkpoints else None,
        }

    # Adaptation --------------------------------------------------------------------------------
    def adapt(self, support_set: LabelledSet, n_steps: int | None = None) -> AdaptedModel:
        """Learns a task from its support set, as meta-testing does.

        `n_steps`: inner steps for gradient-based algorithms (default: `test_inner_steps`;
        0 keeps the meta-learned initialisation); the others adapt in one pass and ignore it
        (with a warning, once), so that one loop serves every algorithm.
        """
        x, y = self.labelled_set(support_set, "support_set", support=True)
        steps = self.steps_to_adapt(n_steps)
        classes = int(y.max()) + 1 if self.module.task_type == "classification" else None
        with evaluating(self.module), torch.no_grad():  # as Lightning tests
            return AdaptedModel(self, self.module.adapt(x, y, steps), classes)

    def steps_to_adapt(self, n_steps: int | None) -> int | None:
        """The steps to adapt in, for the algorithm: `n_steps` (a whole number >= 0, or None for
        its `test_inner_steps`) where it adapts by gradient steps, None where it adapts in one
        pass, which a UserWarning says the first time."""
        if n_steps is None:
            return None
        check_whole_number("n_steps", n_steps, minimum=0)
        if self.module.adapts_by_steps:
            return n_steps
        if not self.said_steps_ignored:
            self.said_steps_ignored = True
            warnings.warn(f"{self.algorithm} adapts in one pass over the support set; it ignores "
                          f"n_steps={n_steps}", UserWarning, stacklevel=3)
        return None

    def evaluate(self, adapted: AdaptedModel, query_set: LabelledSet) -> float:
        """Accuracy of an adapted model on a query set (regression: mean squared error)."""
        return adapted.evaluate(*self.labelled_set(query_set, "query_set", classes=adapted.classes))

    # Checkpoints -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Writes a checkpoint that eval.py and `load` read; written whole or not at all."""
        return save_checkpoint(path, self.module, self.optimizer,
                               OmegaConf.to_container(self.config, resolve=True),
                               self.tasks.input_record(), self.steps_taken)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None,
             output_dir: str | os.PathLike | None = None) -> MetaLearner:
        """A learner from a checkpoint of `save` or of train.py (with its optimiser state).

        `model`: the user's network again, when it was trained with one. `output_dir`: where a
        later `fit` writes (default: a new run directory, never the checkpoint's run).
        """
        checkpoint = load_checkpoint(str(path))
        cfg = upgrade_stored_config(OmegaConf.create(checkpoint[CONFIG_KEY]))
        cfg.paths.output_dir = str(output_dir or default_output_dir(cfg))
        learner = cls.__new__(cls)
        learner.setup(cfg, model)
        learner.module.load_state_dict(checkpoint["state_dict"])
        if checkpoint.get("optimizer_states"):
            learner.optimizer.load_state_dict(checkpoint["optimizer_states"][0])
        learner.steps_taken = checkpoint.get("global_step", 0)
        return learner

    # Device ------------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> MetaLearner:
        """Moves the model and the optimiser's state to `device` ("cuda", "cpu"); inputs follow."""
        self.module.to(device)
        self.fabric = None
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    state[key] = value.to(device)
        return self

    @property
    def device(self) -> torch.device:
        parameter = next(self.module.parameters(), None)
        return torch.device("cpu") if parameter is None else parameter.device


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then the mode the module had."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's device lines and its noise held back for the block; the progress bar, the
    warnings about the user's settings and errors still show."""
    engine_quiet_lightning()
    loggers = [logging.getLogger(name) for name in RANK_ZERO_LOGGERS]
    device_lines = LightningNoise(DEVICE_LINES)
    for logger in loggers:
        logger.addFilter(device_lines)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(device_lines)


def qualified_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"
