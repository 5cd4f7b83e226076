"""Checks of a composed config before anything is built or trained (`validate`): first its values
(`check_config`: sizes, rates, finite numbers, the trainer's step limit; it imports nothing, so
an entry point reports these before torch and Lightning load), then what the components' classes
say (`check_components`: the algorithm takes the dataset's task type, the monitor's direction
fits its score, every key is a setting of its group's target, the trainer's precision and
devices fit this machine); once the data is loaded, the fit of the algorithm, its backbone and
the episodes to it (`check_algorithm_fits`, `check_episode_fits`). `check_added_keys` refuses
a key that a `+key=value` override adds where it is no setting.

Each problem is reported as one line naming the key, the value and what is allowed
(a UserError, which the entry points print without a traceback).
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from hydra.utils import get_class, get_object
from omegaconf import DictConfig, OmegaConf

from metalearn.errors import (
    UserError,
    check_finite_number,
    check_positive_number,
    check_whole_number,
    is_number,
)
from metalearn.paths import component_name, family_choice, family_name

if TYPE_CHECKING:  # the data's classes import torch, which the value checks do without
    from metalearn.data.task_family import TaskFamily

#: the constructor arguments the builder passes, by config group
INJECTED_ARGUMENTS = {
    "dataset": ("tokenizer",),
    "backbone": ("input_shape", "tokenizer", "categories", "observation_space", "action_space"),
    "episode": ("tasks", "training_stream"),
    "algorithm": ("backbone", "task_type", "output_dim", "train_classes", "envs"),
}
#: the meta-reinforcement-learning algorithms' configs (configs/algorithm/), which an env suggests
RL_ALGORITHMS = ("maml_rl", "promp", "pretrained_rl", "random_rl")
#: the text encoders' configs (configs/backbone/), which an error for texts suggests
TEXT_ENCODERS = ("bag_of_embeddings", "text_cnn", "text_transformer", "wordllama",
                 "pretrained_text")
#: groups whose keys are constructor arguments of their `_target_`
BUILT_GROUPS = ("dataset", "env", "backbone", "episode", "algorithm")
# keys that must be integers >= 1 wherever they are present
POSITIVE_INTS = (
    "episode.n_way", "episode.k_shot", "episode.query_size", "episode.train_n_way",
    "episode.train_query_size", "episode.num_tasks",
    "episode.val_episodes", "episode.test_episodes", "episode.eval_batch_size",
    "episode.meta_batch_size", "algorithm.inner_steps", "algorithm.test_inner_steps",
    "algorithm.embedding_dim", "algorithm.processing_steps", "algorithm.relation_channels",
    "algorithm.hidden_units", "algorithm.memory_slots", "algorithm.memory_width",
    "algorithm.read_heads", "algorithm.write_heads", "algorithm.controller_size",
    "algorithm.meta_hidden_size", "algorithm.batch_size", "algorithm.finetune_epochs",
    "algorithm.finetune_batch_size", "num_epochs", "eval_frequency", "save_frequency",
    "dataset.image_size", "backbone.hidden_channels", "backbone.num_blocks", "trainer.num_nodes",
    "episode.val_tasks", "episode.test_tasks", "algorithm.episodes_per_task", "env.horizon",
)
#: of those, the keys that may also be "auto" (chosen from the data: the image folder's size)
AUTO_INTS = ("dataset.image_size",)
# keys that must be finite numbers > 0 wherever they are set (null leaves gradient clipping off)
POSITIVE_FLOATS = ("algorithm.outer_lr", "algorithm.inner_lr", "algorithm.cosine_scale",
                   "algorithm.finetune_lr", "algorithm.scale", "algorithm.distill_temperature",
                   "algorithm.scheduler.gamma", "trainer.gradient_clip_val", "algorithm.max_kl")
#: which way a meta-val score is better, by the end of its name (val/acc, val/pair_acc, val/mse)
BETTER = {"acc": "max", "mse": "min", "loss": "min", "return": "max"}
#: the score an algorithm monitors unless told (EpisodicModule.score_name), by task type
OWN_SCORES = {"classification": "acc", "regression": "mse", "reinforcement": "return"}
#: precisions that compute in float16, which a CPU has no arithmetic for (Lightning runs
#: 16-mixed there as bf16-mixed without a word, and 16-true at a crawl)
FLOAT16_PRECISIONS = ("16", "16-mixed", "16-true", "transformer-engine-float16")


def accepted_arguments(target: type | Callable) -> list[str]:
    """The keyword arguments a class's constructor (or a function) takes, following `**kwargs`
    passed on to the base classes (as the algorithms pass theirs to EpisodicModule)."""
    if not isinstance(target, type):
        return [p.name for p in inspect.signature(target).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names: list[str] = []
    for klass in target.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names += [p.name for p in parameters
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def settings_of(group: str, node: DictConfig) -> list[str]:
    """The settings a config of `group` may hold: its target's constructor arguments, less the
    injected ones."""
    injected = INJECTED_ARGUMENTS.get(group, ())
    return [name for name in accepted_arguments(get_object(node._target_))
            if name not in injected]


def check_known_keys(cfg: DictConfig) -> None:
    """Every key of the built groups must be a setting of its target."""
    for group in BUILT_GROUPS:
        node = cfg.get(group)
        if not node or "_target_" not in node:
            continue
        settings = settings_of(group, node)
        for key in node:
            if not key.startswith("_") and key not in settings:
                raise UserError(f"{group}.{key} is not a setting of {node._target_}; its "
                                f"settings are: {', '.join(sorted(settings))}")


def not_a_setting(cfg: DictConfig, key: str) -> UserError:
    """The error for `key`, which the config does not hold (or holds only because a `+key`
    added it): the nearest key beside it; or, beside a component's keys, whether it is a
    setting of the component's constructor that the config leaves out (then: add it with +)."""
    path, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, path) if path else cfg
    if not isinstance(node, DictConfig):  # its parent is no node either: that is the mistake
        return not_a_setting(cfg, path)
    beside = {other: value for other, value in OmegaConf.to_container(node).items()
              if other != name and not other.startswith("_")}
    owner = f" of {node._target_}" if "_target_" in node else f" of {path}" if path else ""
    candidates = list(beside)
    if "_target_" in node and not difflib.get_close_matches(name, candidates, n=1):
        candidates = settings_of(path, node)
        if name in candidates and name not in node:
            return UserError(f"{key} is a setting{owner} that the config leaves out: add it "
                             f"with +{key}=VALUE")
    match = difflib.get_close_matches(name, candidates, n=1)
    if match:
        return UserError(f"{key} is not a setting{owner}; did you mean "
                         f"{f'{path}.' if path else ''}{match[0]}?")
    if path == "baselines":  # a mapping of names, each checked when built
        return UserError(f"{key} is not among this config's baselines "
                         f"({', '.join(candidates) or 'none'}): add it with +{key}={{}}")
    if not candidates:  # an empty node, such as baselines.mixed_model: {}
        return UserError(f"{key} is not a setting{owner}, which holds none yet: add it with "
                         f"+{key}=VALUE")
    # the settings beside it, not the groups (a key of the top level is no group)
    listed = [other for other in candidates if not isinstance(beside.get(other), dict)]
    return UserError(f"{key} is not a setting{owner}; its settings are: "
                     f"{', '.join(sorted(listed or candidates))}")


def check_added_keys(cfg: DictConfig, keys: Iterable[str]) -> None:
    """Keys that `+key=value` overrides added must be settings: of the component whose node
    they land in (`+trainer.limit_train_batches=2`, a Lightning Trainer argument), or a new
    component's `_target_`; a top-level `+num_epoch=1` or `+eval.shotz=[1]` is refused with the
    nearest key. The keys of a built group's own node are left to `check_known_keys`, on the
    config that is built (for eval.py, the checkpoint's)."""
    for key in keys:
        path, _, name = key.rpartition(".")
        if (path in BUILT_GROUPS or key.startswith(("hydra.", "baselines.", "env.options."))
                or name.startswith("_")):
            continue  # baselines and an env's options are checked when built
        node = OmegaConf.select(cfg, path) if path else cfg
        added = OmegaConf.select(cfg, key)
        if isinstance(added, DictConfig) and "_target_" in added:
            continue  # a component added whole: +callbacks.mine={_target_: ...}
        if "_target_" in node and name in settings_of(path, node):
            continue
        raise not_a_setting(cfg, key)


def validate(cfg: DictConfig) -> None:
    """The checks that need no data: the values first, which import nothing, then what the
    components' classes say."""
    check_config(cfg)
    check_components(cfg)


def check_config(cfg: DictConfig) -> None:
    """Type and range checks of the values, which import nothing."""
    for key in sorted(OmegaConf.missing_keys(cfg)):
        if key.split(".")[0] in ("dataset", "env", "backbone", "episode", "algorithm", "trainer"):
            raise UserError(f"{key} has no default and must be set, e.g. "
                            f"python train.py {key}=...")
    for key in POSITIVE_INTS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not (key in AUTO_INTS and value == "auto"):
            check_whole_number(key, value)
    for key in POSITIVE_FLOATS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_positive_number(key, value)
    check_finite_numbers(cfg)
    check_whole_number("seed", cfg.get("seed"), minimum=0)
    check_max_steps(cfg)
    if cfg.get("test_ckpt") not in ("best", "last"):
        raise UserError(f"test_ckpt={cfg.get('test_ckpt')!r} must be one of: best, last")
    if cfg.get("monitor_mode") not in (None, "max", "min"):
        raise UserError(f"monitor_mode={cfg.monitor_mode!r} must be max or min (or null: the "
                        "monitored score's own direction)")


def numbers(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """Every number of a config value with its key (`dataset.amplitude[1]`), through nested
    nodes and lists."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from numbers(item, f"{key}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{key}[{index}]")
    elif is_number(value):
        yield key, value


def check_finite_numbers(cfg: DictConfig) -> None:
    """No number set for what is built (the algorithm with its optimiser and schedule, the
    backbone, the dataset, the episodes) or for the trainer is NaN or infinite. Interpolations
    are left as they are: the key they point to is checked where it is set."""
    for group in (*BUILT_GROUPS, "trainer"):
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            for key, value in numbers(OmegaConf.to_container(node), group):
                check_finite_number(key, value)


def check_max_steps(cfg: DictConfig) -> None:
    """trainer.max_steps: a whole number >= 1, or -1 for no limit (0 would train nothing)."""
    max_steps = (cfg.get("trainer") or {}).get("max_steps")
    if max_steps in (None, -1):
        return
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise UserError(f"trainer.max_steps={max_steps!r} must be a whole number >= 1, or -1 "
                        "(no limit: the epochs decide)")


def check_components(cfg: DictConfig) -> None:
    """What the components' classes say (each check imports its component's module): the
    algorithm takes the dataset's task type (before any of the keys an algorithm sets on the
    other groups is looked at), the monitor's direction, the settings, the devices."""
    task_type = declared_task_type(cfg)
    if task_type is not None:
        check_task_type(cfg, task_type)
    check_monitor_mode(cfg, task_type)
    check_known_keys(cfg)
    check_devices(cfg)


def declared_task_type(cfg: DictConfig) -> str | None:
    """The task type the dataset's (or env family's) class declares (Sinusoid:
    `task_type = "regression"`), known before any data is loaded; None where the data decides
    (a table's features)."""
    check_one_task_family(cfg)
    dataset = cfg.get("env") or cfg.get("dataset")
    if not dataset or "_target_" not in dataset:
        return None
    task_type = getattr(get_object(dataset._target_), "task_type", None)
    return task_type if isinstance(task_type, str) else None


def check_one_task_family(cfg: DictConfig) -> None:
    """A run learns from a dataset or from environments (env=), not both: the meta-RL
    algorithms choose an env and no dataset, the others a dataset."""
    if cfg.get("env") is None:
        return
    algorithm = component_name(cfg.algorithm)
    if cfg.get("dataset") is not None:
        if "reinforcement" in get_class(cfg.algorithm._target_).supported_task_types:
            raise UserError(f"algorithm={algorithm} learns from environments "
                            f"(env={family_name(cfg)}), and dataset={component_name(cfg.dataset)} "
                            "is chosen too: drop dataset=")
        raise UserError(f"env={family_name(cfg)} is a distribution of environments, which "
                        f"algorithm={algorithm} does not learn from; use a meta-RL algorithm "
                        f"(algorithm={' | '.join(RL_ALGORITHMS)}) or drop env=")


def check_task_type(cfg: DictConfig, task_type: str) -> None:
    algorithm = get_class(cfg.algorithm._target_)
    if task_type not in algorithm.supported_task_types:
        hint = (f"; for environments use algorithm={' | '.join(RL_ALGORITHMS)}"
                if task_type == "reinforcement" else "")
        raise UserError(
            f"algorithm={component_name(cfg.algorithm)} does not support {task_type} "
            f"({family_choice(cfg)}); it supports: "
            f"{', '.join(algorithm.supported_task_types)}{hint}"
        )


def check_monitor_mode(cfg: DictConfig, task_type: str | None) -> None:
    """monitor_mode, where set, must pick the better end of the monitored score: max for an
    accuracy, min for an error or a loss (the monitor left null is the algorithm's own score,
    by the task type)."""
    mode = cfg.get("monitor_mode")
    monitor = cfg.get("monitor") or (task_type and f"val/{OWN_SCORES[task_type]}")
    if mode is None or not monitor:
        return
    better = BETTER.get(monitor.rsplit("/", 1)[-1].rsplit("_", 1)[-1])
    if better is not None and mode != better:
        raise UserError(f"monitor_mode={mode} would keep the checkpoint of the "
                        f"{'lowest' if mode == 'min' else 'highest'} {monitor}, the worst; use "
                        f"monitor_mode={better} (or leave it null)")


def check_devices(cfg: DictConfig) -> None:
    """A GPU run needs a GPU, a CPU run computes in a precision the CPU has arithmetic for, and
    cannot have more processes than the machine has cores (checked before any process
    starts)."""
    import torch  # here, not above: the value checks run before torch loads

    trainer = cfg.get("trainer") or {}
    accelerator, devices = trainer.get("accelerator"), trainer.get("devices")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator}, but this machine has no GPU that "
                        "torch can use; use trainer=cpu (or trainer.accelerator=auto)")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    precision = str(trainer.get("precision"))
    if on_cpu and precision in FLOAT16_PRECISIONS:
        raise UserError(f"trainer.precision={precision} computes in float16, which needs a GPU; "
                        "on the CPU use bf16-mixed, 32-true or 64-true")
    if on_cpu and isinstance(devices, int) and devices > (os.cpu_count() or 1):
        raise UserError(f"trainer.devices={devices} is more than the {os.cpu_count()} CPU cores "
                        "of this machine")


def takes_images(backbone: type) -> bool:
    """Whether a backbone's constructor declares that it takes images only: `input_shape:
    tuple[int, int, int]`, [C, H, W] (an MLP takes `tuple[int, ...]`, any shape)."""
    parameter = inspect.signature(backbone).parameters.get("input_shape")
    annotation = None if parameter is None else parameter.annotation
    if isinstance(annotation, str):  # postponed (`from __future__ import annotations`): its text
        return annotation.replace(" ", "") == "tuple[int,int,int]"
    return annotation == tuple[int, int, int]


def check_algorithm_fits(cfg: DictConfig, tasks: TaskFamily) -> None:
    """The algorithm and its backbone against the loaded data: its task type, examples to
    pre-train on where the algorithm pre-trains, the training way, and inputs of the shape the
    backbone takes."""
    check_task_type(cfg, tasks.task_type)
    algorithm = get_class(cfg.algorithm._target_)
    if algorithm.trains_on_examples:
        tasks.num_examples("train")  # a family without labelled examples refuses in one line
    train_n_way = cfg.episode.get("train_n_way")
    if train_n_way and train_n_way != cfg.episode.n_way and not algorithm.supports_other_train_way:
        raise UserError(
            f"episode.train_n_way={train_n_way} differs from episode.n_way={cfg.episode.n_way}, but "
            f"{component_name(cfg.algorithm)} has one output per class; leave train_n_way null"
        )
    check_backbone_fits(cfg, tasks)


def check_backbone_fits(cfg: DictConfig, tasks: TaskFamily) -> None:
    """A backbone for images refuses data of another shape (vectors), a text encoder data that
    is not text, and a backbone that is no text encoder texts, in one line saying what to use,
    before it is built."""
    shape = tuple(tasks.input_shape)
    backbone = get_class(cfg.backbone._target_)
    reads_text = "tokenizer" in accepted_arguments(backbone)
    if tasks.tokenizer is not None and not reads_text:
        raise UserError(f"dataset={component_name(cfg.dataset)} gives texts (token ids), which "
                        f"the backbone {backbone.__name__} does not read; use a text encoder: "
                        f"backbone={' | '.join(TEXT_ENCODERS)}")
    if tasks.tokenizer is None and reads_text:
        given = "images" if len(shape) == 3 else f"inputs of shape {shape}"
        raise UserError(f"the backbone {backbone.__name__} reads texts, and "
                        f"dataset={component_name(cfg.dataset)} gives {given}; use a text "
                        "dataset (dataset=text or wordnet) or another backbone")
    if len(shape) != 3 and takes_images(backbone):
        given = f"vectors of size {shape[0]}" if len(shape) == 1 else f"inputs of shape {shape}"
        raise UserError(f"the backbone {backbone.__name__} takes images [C, H, W], and "
                        f"dataset={component_name(cfg.dataset)} gives {given}; use "
                        "backbone=mlp, which takes any shape")


def check_episode_fits(cfg: DictConfig, tasks: TaskFamily) -> None:
    """Task shape against what each split of the dataset holds (the family's own check)."""
    from metalearn.data.task_family import EpisodeSettings  # with the data, which is loaded

    episode = EpisodeSettings(**{key: cfg.episode.get(key) for key in EpisodeSettings._fields})
    tasks.check_fits(episode, component_name(cfg.dataset))
