"""What a MetaLearner checks of the data a user hands it: inputs of the dataset's shape, labelled
sets, batches of tasks, and task families that fit the learner. Each mistake is a UserError in one
line naming the argument."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from metalearn.data.episodes import Task, TaskBatch, cat_padded
from metalearn.data.task_family import TaskFamily
from metalearn.errors import UserError
from metalearn.paths import component_name

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from metalearn.algorithms.base import EpisodicModule
    from metalearn.data.tokenizers import Tokenizer

# A support or query set: {"x": inputs, "y": targets} or (inputs, targets).
LabelledSet = Mapping[str, Any] | Sequence[Any]


def tensor_of_numbers(value: Any, name: str, allowed: str) -> Tensor:
    """value as a tensor; where torch cannot read it as numbers (strings, None, other objects),
    the UserError "<name> <allowed>; got <value, shortened>"."""
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):  # what torch raises for strings and objects
        raise UserError(f"{name} {allowed}; got {reprlib.repr(value)}") from None


def texts_in(x: Any) -> bool:
    """Whether x is texts: a list of strings, or a list of lists of strings."""
    while isinstance(x, (list, tuple)) and x:
        x = x[0]
    return isinstance(x, str)


def encoded_texts(tokenizer: Tokenizer, texts: Sequence, max_length: int) -> Tensor:
    """Texts (a list of strings, or a list of such lists of one length) as token ids, cut at
    max_length and right-padded with 0 to the longest."""
    if isinstance(texts[0], str):
        ids = [row[:max_length] for row in tokenizer.encode(list(texts))]
        rows = torch.zeros(len(ids), max(1, *map(len, ids)), dtype=torch.long)
        for row, text in zip(rows, ids):
            row[:len(text)] = torch.tensor(text, dtype=torch.long)
        return rows
    tasks = [encoded_texts(tokenizer, task, max_length) for task in texts]
    if len({len(task) for task in tasks}) > 1:
        raise UserError("the tasks' texts differ in number; every task of a batch holds as many")
    return cat_padded([task.unsqueeze(0) for task in tasks])


class InputChecks:
    """The checks of MetaLearner's inputs, against its `module`, `tasks` and `config`."""

    module: EpisodicModule
    tasks: TaskFamily
    config: DictConfig
    algorithm: str
    device: torch.device

    def inputs(self, x: Any, name: str, batch_dims: int = 1) -> Tensor:
        """x as this learner's inputs: the dataset's input shape after `batch_dims` dimensions,
        at least one example, finite values (not uint8 pixels), on the learner's device. A text
        learner's are texts or token ids (`token_ids`)."""
        if self.tasks.tokenizer is not None:
            return self.token_ids(x, name, batch_dims)
        x = tensor_of_numbers(x, name, "must be a tensor or array of numbers (a list of "
                                       "tensors: torch.stack it)")
        expected = tuple(self.tasks.input_shape)
        if tuple(x.shape[batch_dims:]) != expected or x.dim() != len(expected) + batch_dims:
            raise UserError(
                f"{name} has shape {tuple(x.shape)}; this {self.algorithm} learner takes "
                f"{'[tasks, examples' if batch_dims == 2 else '[examples'}, "
                f"{', '.join(map(str, expected))}] ({component_name(self.config.dataset)} inputs)"
            )
        if x.numel() == 0:
            raise UserError(f"{name} is empty: a task needs at least one example")
        if x.dtype == torch.uint8:  # taken as floats 0-255, they score at chance without a word
            raise UserError(f"{name} holds uint8 pixels (0-255); the learner takes the floats the "
                            f"dataset's loader makes: x.float() / 255, then the dataset's "
                            f"normalisation where it has one (dataset.normalize)")
        x = x.to(self.device, torch.get_default_dtype())
        if not torch.isfinite(x).all():
            raise UserError(f"{name} holds NaN or infinite values")
        return x

    def token_ids(self, x: Any, name: str, batch_dims: int) -> Tensor:
        """A text learner's inputs as token ids [(tasks,) examples, length], 0 padding: texts (a
        list of strings, for tasks a list of such lists), which the tokenizer the learner was
        built with encodes (cut at dataset.max_length), or ids as the dataset's loader makes."""
        max_length = self.tasks.input_shape[0]
        if texts_in(x):
            x = encoded_texts(self.tasks.tokenizer, x, max_length)
        x = tensor_of_numbers(x, name, "must be texts (a list of strings) or token ids")
        expected = f"[{'tasks, ' if batch_dims == 2 else ''}examples, at most {max_length}]"
        if x.dim() != batch_dims + 1 or x.shape[-1] > max_length or x.is_floating_point():
            raise UserError(f"{name} has shape {tuple(x.shape)} ({x.dtype}); this "
                            f"{self.algorithm} learner takes texts (a list of strings) or integer "
                            f"token ids {expected}")
        if x.numel() == 0:
            raise UserError(f"{name} is empty: a task needs at least one example")
        vocab_size = self.tasks.tokenizer.vocab_size
        if int(x.min()) < 0 or int(x.max()) >= vocab_size:
            raise UserError(f"{name} holds token ids outside 0..{vocab_size - 1}, the ids of "
                            "the learner's tokenizer")
        return x.to(self.device, torch.long)

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
        classification = self.module.task_type == "classification"
        x = self.inputs(x, f"{name} x")
        y = (tensor_of_numbers(y, f"{name} labels", "must be integer class indices 0..N-1 (map "
                               "class names to indices first)") if classification
             else tensor_of_numbers(y, f"{name} targets", "must be numbers")).to(self.device)
        if y.dim() == 0:
            raise UserError(f"{name} has {len(x)} inputs but a single target; give one per input")
        if len(y) != len(x):
            raise UserError(f"{name} has {len(x)} inputs but {len(y)} targets")
        if not classification:
            y = y.to(x.dtype)
            if not torch.isfinite(y).all():
                raise UserError(f"{name} targets hold NaN or infinite values")
            return x, y
        if support:
            self.check_support_labels(y, name)
        else:
            self.check_query_labels(y, name, classes)
        return x, y.long()  # whatever integer type they came in, as the losses take them

    def check_support_labels(self, y: Tensor, name: str) -> None:
        """Classes 0..N-1, each with at least one example, N at least 2 (and at most the
        learner's outputs)."""
        self.check_query_labels(y, name, self.fixed_classes)
        classes = int(y.max()) + 1
        missing = sorted(set(range(classes)) - set(y.tolist()))
        if missing:
            raise UserError(f"{name} has no example of class {missing[0]}: labels must be "
                            "0..N-1 with at least one support example of each class")
        if classes < 2:  # with one class every prediction is right
            raise UserError(f"{name} has examples of 1 class: a task needs at least 2 classes, "
                            "labelled 0..N-1")

    def check_query_labels(self, y: Tensor, name: str, classes: int | None) -> None:
        """Integer labels, in 0..classes-1 when the number of classes is known."""
        if (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool
                or y.dim() != 1):
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
        # labels as the losses take them, whatever integer or float type they came in
        targets = torch.long if self.module.task_type == "classification" else support_x.dtype
        return tasks._replace(
            support_x=support_x, support_y=tasks.support_y.to(self.device, targets),
            query_x=query_x, query_y=tasks.query_y.to(self.device, targets),
            classes=None if tasks.classes is None else tasks.classes.to(self.device))

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
