"""Every config composes and builds: each algorithm with each dataset it supports, every named
experiment, every hyperparameter search at the ends of its search space, and one fast_dev_run
(debug=fdr) per algorithm through train.py's own function. A config's values are its target's
constructor defaults, so the Python API and train.py start from the same settings."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
from hydra.utils import get_class, get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from metalearn.algorithms.base import EpisodicModule
from metalearn.data.datamodule import EpisodicDataModule
from metalearn.data.episodes import ClassExamples
from metalearn.data.task_family import ClassificationTaskFamily
from metalearn.paths import CONFIG_DIR, component_name
from metalearn.run.build import build
from metalearn.run.compose import compose_config, config_choices
from metalearn.run.config_check import RL_ALGORITHMS, accepted_arguments
from metalearn.run.training import train
from tests.conftest import make_config

ALGORITHMS = config_choices("algorithm")
# the config groups whose configs build an object (_target_), each mirroring a constructor
TARGET_GROUPS = ("algorithm", "dataset", "backbone", "episode")
# the datasets that build without a user's files (the others: tests/test_datasets.py)
DATASETS = ["omniglot", "sinusoid"]


def supported_pairs() -> list[tuple[str, str]]:
    """(algorithm, dataset) for every dataset whose task type the algorithm takes."""
    pairs = []
    for algorithm in ALGORITHMS:
        for dataset in DATASETS:
            cfg = compose_config([f"algorithm={algorithm}", f"dataset={dataset}"], ".")
            if (get_class(cfg.dataset._target_).task_type
                    in get_class(cfg.algorithm._target_).supported_task_types):
                pairs.append((algorithm, dataset))
    return pairs


def test_every_algorithm_and_dataset_has_a_config():
    # Hydra's options are the config files (no count: a new algorithm needs no test edit)
    assert ALGORITHMS == sorted(path.stem for path in (CONFIG_DIR / "algorithm").glob("*.yaml"))
    assert set(DATASETS) <= set(config_choices("dataset"))
    regression = [algorithm for algorithm, dataset in supported_pairs() if dataset == "sinusoid"]
    assert regression == ["anil", "fomaml", "maml", "metasgd", "reptile"]


def own_node(path: Path) -> DictConfig:
    """A config file's own node (under its group's key where it is packaged globally), on the
    configs of its group that it extends (`defaults: [maml]`)."""
    raw = OmegaConf.load(path)
    extended = [entry for entry in raw.pop("defaults", [])
                if isinstance(entry, str) and entry != "_self_"]
    node = raw if "_target_" in raw else raw[path.parent.name]
    return OmegaConf.merge(*(own_node(path.with_name(f"{name}.yaml")) for name in extended), node)


def constructor_default(target: Any, name: str) -> Any:
    """The default of argument `name` of a class's constructor (or a function's), where
    accepted_arguments finds the argument: on the class or, through `**kwargs`, a base class."""
    functions = ([vars(klass)["__init__"] for klass in target.__mro__ if "__init__" in vars(klass)]
                 if isinstance(target, type) else [target])
    for function in functions:
        parameter = inspect.signature(function).parameters.get(name)
        if parameter is not None and parameter.kind != parameter.VAR_KEYWORD:
            return parameter.default
    return inspect.Parameter.empty


def as_tuples(value: Any) -> Any:
    """A YAML's lists and a constructor's tuples alike, for comparing."""
    if isinstance(value, list | tuple):
        return tuple(as_tuples(item) for item in value)
    return value


def test_every_config_default_equals_its_constructor_default():
    """A Python user who builds a class gets the settings train.py runs with: each value of a
    config with a _target_ is its constructor's default, where the constructor has one (but for
    interpolations such as ${paths.data_dir} and factories such as optimizers)."""
    disagreements = []
    for group in TARGET_GROUPS:
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            node = own_node(path)
            target = get_object(node._target_)
            for key in accepted_arguments(target):
                if (key not in node or OmegaConf.is_interpolation(node, key)
                        or OmegaConf.is_missing(node, key)):
                    continue
                value = node[key]
                if isinstance(value, DictConfig) and {"_target_", "_partial_"} & set(value):
                    continue
                default = constructor_default(target, key)
                if default is inspect.Parameter.empty:
                    continue
                if isinstance(value, DictConfig | ListConfig):
                    value = OmegaConf.to_container(value)
                if as_tuples(value) != as_tuples(default):
                    disagreements.append(
                        f"{path.relative_to(CONFIG_DIR)}: {key}: {value!r} in the YAML, "
                        f"{default!r} in {node._target_}'s constructor")
    assert not disagreements, "\n".join(disagreements)


@pytest.mark.parametrize(("algorithm", "dataset"), supported_pairs())
def test_each_algorithm_builds_on_each_dataset_it_supports(algorithm, dataset, tmp_path):
    cfg = make_config([f"algorithm={algorithm}", f"dataset={dataset}"], tmp_path)
    datamodule, model = build(cfg)
    assert isinstance(datamodule, EpisodicDataModule) and isinstance(model, EpisodicModule)
    assert component_name(cfg.algorithm) == algorithm
    assert datamodule.meta_batch_size == cfg.episode.meta_batch_size
    # the built module predicts a task of the config's shape
    batch = datamodule.val_dataloader().dataset[0]
    with torch.no_grad():
        predictions = model.eval().adapt_and_predict(*batch.task(0)[:3])
    assert predictions.shape[0] == batch.query_x.shape[1]


def synthetic_tasks(input_shape: tuple[int, ...], classes: int = 60,
                    examples: int = 20) -> ClassificationTaskFamily:
    """Random images of the given shape: a stand-in for a dataset at a size not cached here."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes, examples, *input_shape), dtype=torch.uint8,
                           generator=generator)
    split = ClassExamples.dense(images, [f"class {c}" for c in range(classes)])
    return ClassificationTaskFamily({"train": split, "val": split, "test": split})


def build_composed(cfg: DictConfig):
    """Builds a config; Omniglot at another image size than the cached 28 px on random images of
    that size (only the data differs: every config group is instantiated)."""
    if component_name(cfg.dataset) == "omniglot" and cfg.dataset.image_size != 28:
        size = cfg.dataset.image_size
        return build(cfg, tasks=synthetic_tasks((1, size, size), classes=cfg.episode.n_way))
    return build(cfg)


@pytest.mark.parametrize("experiment", config_choices("experiment"))
def test_each_experiment_builds(experiment, tmp_path):
    cfg = make_config([f"experiment={experiment}"], tmp_path)
    assert component_name(cfg.algorithm) in experiment  # maml_omniglot -> maml
    datamodule, model = build_composed(cfg)
    assert model.output_dim == (cfg.episode.n_way if model.task_type == "classification" else 1)
    assert datamodule.steps_per_epoch == cfg.episode.num_tasks // cfg.episode.meta_batch_size


def search_space_ends(cfg: DictConfig) -> list[list[str]]:
    """Overrides setting every parameter of a search to its first value, then to its last: the
    ends of each choice list and interval."""
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    firsts, lasts = [], []
    for override in OverridesParser.create().parse_overrides(params):
        sweep = override.value()
        if isinstance(sweep, ChoiceSweep):
            ends = sweep.list[0], sweep.list[-1]
        else:
            assert isinstance(sweep, IntervalSweep), override
            ends = sweep.start, sweep.end
        firsts.append(f"{override.key_or_group}={ends[0]}")
        lasts.append(f"{override.key_or_group}={ends[1]}")
    return [firsts, lasts]


@pytest.mark.parametrize("search", config_choices("hparams_search"))
def test_each_hyperparameter_search_builds_at_the_ends_of_its_space(search, tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        searched = compose("train", overrides=[f"hparams_search={search}"],
                           return_hydra_config=True)
    assert search.startswith(component_name(searched.algorithm))  # protonet_optuna -> protonet
    for overrides in search_space_ends(searched):
        cfg = make_config([f"hparams_search={search}", *overrides], tmp_path)
        build(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fast_dev_run_of_each_algorithm(algorithm, tmp_path):
    """One meta-training step, one validation and one test batch of each algorithm's default
    config (2 tasks a step and a smaller Conv4 where it has one, to keep the runs short)."""
    overrides = [f"algorithm={algorithm}", "debug=fdr", "episode.meta_batch_size=2"]
    if algorithm in RL_ALGORITHMS:  # 2 rollouts of 10 steps per task; all the test tasks
        overrides += ["algorithm.episodes_per_task=2", "env.horizon=10"]
        record = train(make_config(overrides, tmp_path))
        assert record["train_steps"] == 1 and record["test_tasks"] == 40
        assert not list(tmp_path.glob("**/*.ckpt"))
        return
    overrides.append("episode.eval_batch_size=2")
    if make_config(overrides, tmp_path).backbone.get("hidden_channels"):
        overrides.append("backbone.hidden_channels=16")
    record = train(make_config(overrides, tmp_path))
    # the record tells what ran: one step, one test batch of 2 episodes (not the config's 600)
    assert record["train_steps"] == 1 and record["test_episodes"] == 2
    assert not list(tmp_path.glob("**/*.ckpt"))
