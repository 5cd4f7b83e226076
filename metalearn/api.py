"""The Python API: `MetaLearner`, `TaskSampler`, `evaluate_few_shot`, and the comparisons
`compare_learners` (learners on the same episodes) and `compare_checkpoints` (compare.py).

A thin face over what train.py runs. A MetaLearner composes the same config (configs/train.yaml
with `algorithm=<name>`, hyperparameters set on the keys that hold them), builds the same
Lightning module through `metalearn.run.build.build`, and fits with the same Trainer. Its checkpoints
are train.py's: `MetaLearner.load` reads train.py's, and eval.py reads those `save` writes.
A TaskSampler draws the episodes the data module draws: `TaskSampler(split="test", seed=0)`
gives exactly the test episodes of train.py's default `episode.eval_seed`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from metalearn.data.datamodule import TaskStream
from metalearn.data.episodes import Task, TaskBatch, TaskShape
from metalearn.data.task_family import SPLITS, TaskFamily
from metalearn.errors import UserError, check_whole_number
from metalearn.evaluation.statistics import mean_and_ci95, pairwise_comparisons
from metalearn.run.build import (
    USER_BACKBONE,
    build,
    build_datamodule,
    instantiate_checked,
    validate,
)
from metalearn.run.checkpoints import CONFIG_KEY, load_checkpoint, save_checkpoint
from metalearn.run.compare import compare
from metalearn.run.compose import (
    algorithm_name,
    apply_settings,
    checked_choice,
    compose_config,
    default_output_dir,
    upgrade_stored_config,
)
from metalearn.run.config_check import check_episode_fits, component_name
from metalearn.run.loggers import end_wandb_runs
from metalearn.run.training import make_trainer, resolve_monitor, write_config

# A support or query set: {"x": inputs, "y": targets} or (inputs, targets).
LabelledSet = Mapping[str, Any] | Sequence[Any]


class TaskSampler:
    """Draws few-shot tasks from one split of a dataset.

    Args:
        dataset: a config of configs/dataset/ ("omniglot", "sinusoid").
        n_way, k_shot, query_size: task shape; query_size counts query examples per class
            (query points for regression).
        split: "train", "val" or "test" (disjoint classes).
        seed: `sample` draws the seed's stream of batches in order, and `fixed_episodes` its
            fixed episodes; seed 0 on "test" gives train.py's test episodes (episode.eval_seed).
        overrides: Hydra overrides of the dataset config, such as "dataset.split=lake".
    """

    def __init__(self, dataset: str = "omniglot", n_way: int = 5, k_shot: int = 1,
                 query_size: int = 15, split: str = "train", seed: int = 0,
                 overrides: Iterable[str] = ()):
        if split not in SPLITS:
            raise UserError(f"split={split!r} is not one of: {', '.join(SPLITS)}")
        cfg = compose_config([f"dataset={checked_choice('dataset', dataset)}", *overrides],
                             output_dir=".")
        apply_settings(cfg, {"n_way": n_way, "k_shot": k_shot, "query_size": query_size,
                             "train_n_way": None, "train_query_size": None})
        validate(cfg)
        self.tasks: TaskFamily = instantiate_checked(cfg.dataset)
        check_episode_fits(cfg, self.tasks)
        self.dataset, self.dataset_config = dataset, cfg.dataset
        self.n_way, self.k_shot, self.query_size = n_way, k_shot, query_size
        self.split, self.seed = split, seed
        self.batches_drawn = 0

    def __repr__(self) -> str:
        return (f"TaskSampler(dataset={self.dataset!r}, n_way={self.n_way}, k_shot={self.k_shot}, "
                f"query_size={self.query_size}, split={self.split!r}, seed={self.seed})")

    def stream(self, tasks_per_item: int, n_way: int | None = None,
               k_shot: int | None = None) -> TaskStream:
        shape = TaskShape(n_way or self.n_way, k_shot or self.k_shot, self.query_size)
        return TaskStream(self.tasks, self.split, shape, tasks_per_item, self.seed, length=2**62)

    def sample(self, batch_size: int = 1) -> TaskBatch:
        """The next batch of `batch_size` tasks of this sampler's stream (support_x [B, N*K, ...]);
        `.task(i)` is one of them, `.tasks()` all of them in turn."""
        check_whole_number("batch_size", batch_size)
        batch = self.stream(batch_size)[self.batches_drawn]
        self.batches_drawn += 1
        return batch

    def fixed_episodes(self, count: int, n_way: int | None = None,
                       k_shot: int | None = None) -> Iterator[TaskBatch]:
        """Episodes 0..count-1 of the seed, each a batch of one task, whatever was sampled
        before; the shape defaults to the sampler's."""
        stream = self.stream(1, n_way, k_shot)
        return (stream[index] for index in range(count))


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


class MetaLearner:
    """One algorithm, built from the same config as `python train.py algorithm=<name>`.

    Args:
        algorithm: a config of configs/algorithm/ (or an alias: "prototypical").
        model: a user's `nn.Module`. For algorithms that adapt a whole network (MAML, FOMAML,
            Meta-SGD, Reptile, the LSTM meta-learner) it is the whole learner and must output one
            value per class (pass `output_layer=True` to add a linear layer); for the others it
            is the embedding (the backbone), ANIL's included. None: the config's backbone.
        dataset: the dataset config the model is built for (its input shape and task type).
        overrides: Hydra overrides, for keys no flat name reaches ("backbone.hidden_channels=32").
        output_dir: where `fit` writes checkpoints and logs (default: a new run directory
            under outputs/runs/, as train.py's).
        **hyperparameters: settings by name, as the config calls them: the algorithm's
            (`inner_lr`, `inner_steps`, `first_order`, `distance`, `embedding_dim`,
            `meta_batch_size`, `outer_lr`, ...), the episode's (`n_way`, `k_shot`, `query_size`,
            `num_tasks`, ...) and the run's (`seed`, `num_epochs`, `eval_frequency`,
            `save_frequency`). An unknown name is an error listing the valid ones.

    Building seeds torch with the config's `seed`, as train.py does before it builds.
    """

    def __init__(self, algorithm: str = "protonet", model: nn.Module | None = None, *,
                 dataset: str = "omniglot", overrides: Iterable[str] = (),
                 output_dir: str | os.PathLike | None = None, **hyperparameters: Any):
        cfg = compose_config([f"algorithm={algorithm_name(algorithm)}",
                              f"dataset={checked_choice('dataset', dataset)}", *overrides],
                             output_dir)
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
        datamodule, self.module = build(cfg, model)
        self.config: DictConfig = cfg
        self.tasks: TaskFamily = datamodule.tasks
        self.optimizer = self.module.optimizer_factory(self.module.parameters(),
                                                       lr=self.module.outer_lr)
        self.steps_taken = 0
        self.fabric: L.Fabric | None = None  # set up by the first meta_train_step

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
        resolve_monitor(cfg, self.module)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        write_config(Path(cfg.paths.output_dir), resolved)
        trainer = make_trainer(cfg, resolved, sampler.tasks.input_shape)
        try:
            trainer.fit(self.module, datamodule=datamodule)
        finally:
            end_wandb_runs(trainer.loggers)
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
        0 keeps the meta-learned initialisation); the others adapt in one pass.
        """
        x, y = self.labelled_set(support_set, "support_set", support=True)
        if n_steps is not None:
            check_whole_number("n_steps", n_steps, minimum=0)
        classes = int(y.max()) + 1 if self.module.task_type == "classification" else None
        with evaluating(self.module), torch.no_grad():  # as Lightning tests
            return AdaptedModel(self, self.module.adapt(x, y, n_steps), classes)

    def evaluate(self, adapted: AdaptedModel, query_set: LabelledSet) -> float:
        """Accuracy of an adapted model on a query set (regression: mean squared error)."""
        return adapted.evaluate(*self.labelled_set(query_set, "query_set", classes=adapted.classes))

    # Checkpoints -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Writes a checkpoint that eval.py and `load` read; written whole or not at all."""
        return save_checkpoint(path, self.module, self.optimizer,
                               OmegaConf.to_container(self.config, resolve=True),
                               self.tasks.input_shape, self.steps_taken)

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

    # Inputs ------------------------------------------------------------------------------------
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

    def inputs(self, x: Any, name: str, batch_dims: int = 1) -> Tensor:
        """x as this learner's inputs: the dataset's input shape after `batch_dims` dimensions,
        at least one example, finite values, on the learner's device."""
        x = torch.as_tensor(x)
        expected = tuple(self.tasks.input_shape)
        if tuple(x.shape[batch_dims:]) != expected or x.dim() != len(expected) + batch_dims:
            raise UserError(
                f"{name} has shape {tuple(x.shape)}; this {self.algorithm} learner takes "
                f"{'[tasks, examples' if batch_dims == 2 else '[examples'}, "
                f"{', '.join(map(str, expected))}] ({component_name(self.config.dataset)} inputs)"
            )
        if x.numel() == 0:
            raise UserError(f"{name} is empty: a task needs at least one example")
        x = x.to(self.device, torch.get_default_dtype())
        if not torch.isfinite(x).all():
            raise UserError(f"{name} holds NaN or infinite values")
        return x

    def labelled_set(self, data: LabelledSet, name: str, support: bool = False,
                     classes: int | None = None) -> tuple[Tensor, Tensor]:
        """(x, y) from {"x": ..., "y": ...} or (x, y), checked against this learner: a support
        set's labels name its classes, a query set's those of the support set it is scored
        against (`classes`)."""
        if isinstance(data, Mapping) and set(data) >= {"x", "y"}:
            x, y = data["x"], data["y"]
        elif isinstance(data, Sequence) and not isinstance(data, str) and len(data) == 2:
            x, y = data
        else:
            raise UserError(f"{name} must be {{'x': inputs, 'y': targets}} or (inputs, targets); "
                            f"got {type(data).__name__}")
        x, y = self.inputs(x, f"{name} x"), torch.as_tensor(y).to(self.device)
        if len(y) != len(x):
            raise UserError(f"{name} has {len(x)} inputs but {len(y)} targets")
        if self.module.task_type != "classification":
            y = y.to(x.dtype)
            if not torch.isfinite(y).all():
                raise UserError(f"{name} targets hold NaN or infinite values")
        elif support:
            self.check_support_labels(y, name)
        else:
            self.check_query_labels(y, name, classes)
        return x, y

    def check_support_labels(self, y: Tensor, name: str) -> None:
        """Classes 0..N-1, each with at least one example (N at most the learner's outputs)."""
        self.check_query_labels(y, name, self.fixed_classes)
        missing = sorted(set(range(int(y.max()) + 1)) - set(y.tolist()))
        if missing:
            raise UserError(f"{name} has no example of class {missing[0]}: labels must be "
                            "0..N-1 with at least one support example of each class")

    def check_query_labels(self, y: Tensor, name: str, classes: int | None) -> None:
        """Integer labels, in 0..classes-1 when the number of classes is known."""
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
            raise UserError(f"{name} labels must be a 1-D integer tensor of classes 0..N-1")
        if y.min() < 0 or (classes is not None and y.max() >= classes):
            raise UserError(f"{name} labels must lie in 0..{(classes or 1) - 1}; got "
                            f"{int(y.min())}..{int(y.max())}")

    @property
    def fixed_classes(self) -> int | None:
        """The number of classes of every task, for algorithms with one output per class."""
        return None if self.module.supports_other_train_way else self.module.output_dim

    def task_batch(self, tasks: TaskBatch | Task | Sequence[TaskBatch | Task],
                   name: str) -> TaskBatch:
        """A batch of tasks from a TaskBatch, one Task, or a list of either, checked against this
        learner and on its device."""
        if isinstance(tasks, Task):
            tasks = TaskBatch.stack([tasks])
        elif (isinstance(tasks, Sequence) and not isinstance(tasks, TaskBatch) and tasks
              and all(isinstance(task, (Task, TaskBatch)) for task in tasks)):
            tasks = TaskBatch.concat(self.task_batch(task, name) for task in tasks)
        if not isinstance(tasks, TaskBatch):
            raise UserError(f"{name} must be the TaskBatch of TaskSampler.sample, a Task, or a "
                            f"list of them; got {type(tasks).__name__}")
        support_x = self.inputs(tasks.support_x, f"{name} support_x", batch_dims=2)
        query_x = self.inputs(tasks.query_x, f"{name} query_x", batch_dims=2)
        if self.module.task_type == "classification":
            for task in range(tasks.batch_size):
                self.check_support_labels(tasks.support_y[task], f"{name} support_y")
                self.check_query_labels(tasks.query_y[task], f"{name} query_y",
                                        int(tasks.support_y[task].max()) + 1)
        return TaskBatch(support_x, tasks.support_y.to(self.device), query_x,
                         tasks.query_y.to(self.device))

    def check_tasks_fit(self, tasks: TaskFamily, n_way: int) -> None:
        if tuple(tasks.input_shape) != tuple(self.tasks.input_shape) or (
                tasks.task_type != self.tasks.task_type):
            raise UserError(
                f"these tasks have {tasks.task_type} inputs of shape {tuple(tasks.input_shape)}; "
                f"this learner was built for {component_name(self.config.dataset)} "
                f"({self.tasks.task_type}, {tuple(self.tasks.input_shape)}): pass the sampler's "
                "dataset to MetaLearner(dataset=...)"
            )
        if self.module.trains_on_examples and (
                tasks.num_classes("train") != self.tasks.num_classes("train")):
            raise UserError(f"this {self.algorithm} learner pre-trains a classifier over the "
                            f"{self.tasks.num_classes('train')} meta-train classes of the dataset "
                            f"it was built for; these tasks have {tasks.num_classes('train')}")
        if (tasks.task_type == "classification" and not self.module.supports_other_train_way
                and n_way != self.module.output_dim):
            raise UserError(f"n_way={n_way}, but this {self.algorithm} learner has "
                            f"{self.module.output_dim} outputs, one per class; build it with "
                            f"n_way={n_way}")


def evaluate_few_shot(learner: MetaLearner,
                      tasks: TaskSampler | TaskBatch | Sequence[TaskBatch | Task],
                      n_way: int = 5, k_shot: int = 1, n_episodes: int = 600) -> tuple[float, float]:
    """Mean query accuracy over `n_episodes` episodes with its 95% confidence interval.

    From a TaskSampler: its fixed episodes of `n_way` classes and `k_shot` shots (the same for
    every learner given the same sampler settings). From tasks (a TaskBatch or a list):
    the first `n_episodes`, which must have that shape. Regression: the mean squared error.
    """
    return mean_and_ci95(episode_scores(learner, tasks, n_way, k_shot, n_episodes))


def episode_scores(learner: MetaLearner,
                   tasks: TaskSampler | TaskBatch | Sequence[TaskBatch | Task],
                   n_way: int = 5, k_shot: int = 1, n_episodes: int = 600) -> Tensor:
    """Each episode's query accuracy (regression: mean squared error), in episode order, on the
    episodes `evaluate_few_shot` takes."""
    check_whole_number("n_episodes", n_episodes)
    if isinstance(tasks, TaskSampler):
        learner.check_tasks_fit(tasks.tasks, n_way)
        episodes: Iterable[TaskBatch] = tasks.fixed_episodes(n_episodes, n_way, k_shot)
    else:
        batch = learner.task_batch(tasks, "tasks")
        if batch.batch_size < n_episodes:
            raise UserError(f"tasks hold {batch.batch_size} episodes, fewer than "
                            f"n_episodes={n_episodes}; pass a TaskSampler or fewer n_episodes")
        if learner.module.task_type == "classification":
            learner.check_tasks_fit(learner.tasks, n_way)
            shape = (len(batch.support_y[0].unique()), batch.support_y.shape[1])
            if shape != (n_way, n_way * k_shot):
                raise UserError(f"tasks are {shape[0]}-way with {shape[1]} support examples; "
                                f"n_way={n_way}, k_shot={k_shot} needs {n_way * k_shot}")
        episodes = (TaskBatch(*(part[:n_episodes] for part in batch)),)
    module = learner.module
    with evaluating(module), torch.no_grad():
        scores = [module.score_episodes(learner.task_batch(episode, "tasks"))
                  for episode in episodes]
    return torch.cat(scores).cpu()


def compare_learners(learners: Sequence[MetaLearner],
                     tasks: TaskSampler | TaskBatch | Sequence[TaskBatch | Task],
                     n_way: int = 5, k_shot: int = 1, n_episodes: int = 600,
                     alpha: float = 0.05) -> dict[str, Any]:
    """Several learners scored on the same episodes (as `evaluate_few_shot` takes them):
    "learners", each learner's score and 95% interval by id (1, 2, ... in the given order), and
    "pairs", each pair's paired difference, its interval, the paired t-test and Wilcoxon
    p-values and their Holm correction over all pairs (metalearn.evaluation.statistics.pairwise_comparisons).
    """
    if len(learners) < 2:
        raise UserError(f"compare_learners needs two or more learners; got {len(learners)}")
    scores = [episode_scores(learner, tasks, n_way, k_shot, n_episodes) for learner in learners]
    rows = []
    for number, (learner, learner_scores) in enumerate(zip(learners, scores), 1):
        mean, ci95 = mean_and_ci95(learner_scores)
        rows.append({"id": number, "algorithm": learner.algorithm, "score": mean, "ci95": ci95})
    pairs = [dict(pair, a=pair["a"] + 1, b=pair["b"] + 1)
             for pair in pairwise_comparisons(scores, alpha)]
    return {"episodes": len(scores[0]), "alpha": alpha, "learners": rows, "pairs": pairs}


def compare_checkpoints(paths: Sequence[str | os.PathLike], overrides: Iterable[str] = (),
                        output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """`python compare.py ckpt_paths=[...] <overrides>`: every checkpoint on the same test
    episodes, with the paired differences and tests; writes comparison.json and comparison.md
    into output_dir (default: a new directory under outputs/compares/) and returns the
    comparison."""
    overrides = list(overrides)
    cfg = compose_config(overrides, output_dir or ".", config_name="compare")
    if output_dir is None:
        cfg.paths.output_dir = str(Path(cfg.paths.log_dir) / "compares"
                                   / time.strftime("%Y-%m-%d_%H-%M-%S"))
    cfg.ckpt_paths = ([str(path) for path in paths] if isinstance(paths, (list, tuple))
                      else paths)
    return compare(cfg, overrides)


# Helpers ------------------------------------------------------------------------------------------
@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then the mode the module had."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def qualified_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"
