"""The Python API (MetaLearner, TaskSampler, evaluate_few_shot) and the flag-style meta_learning.py:
faces over the modules train.py runs, tested against train.py and eval.py themselves."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from metalearn import MetaLearner, TaskSampler, compare_learners, evaluate_few_shot
from metalearn.api.comparisons import episode_scores
from metalearn.cli.flags import main as meta_learning_main
from metalearn.errors import UserError
from metalearn.run.build import build
from metalearn.run.compose import apply_settings
from tests.conftest import ROOT, make_config
from tests.helpers import user_error

LAKE = ["dataset.split=lake", "dataset.rotations=false"]
SPEC = ROOT.parent / "shared" / "SPEC.md"
SPEC_COPY = ROOT / "tests" / "spec_entry_points.md"  # its section 1


def conv_net(outputs: int) -> nn.Sequential:
    """A user's own network: 3 conv blocks of 32 filters and a linear layer."""
    layers, channels = [], 1
    for _ in range(3):
        layers += [nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels = 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 3 * 3, outputs))


def mean_accuracy(learner: MetaLearner, sampler: TaskSampler, episodes: int,
                  n_steps: int | None = None) -> float:
    """Mean query accuracy of learner.adapt on the sampler's fixed episodes."""
    scores = []
    for episode in sampler.fixed_episodes(episodes):
        task = episode.task(0)
        scores.append(learner.evaluate(learner.adapt(task.support, n_steps=n_steps), task.query))
    return sum(scores) / len(scores)


def python_block(markdown: str, after_heading: str) -> str:
    match = re.search(rf"{re.escape(after_heading)}.*?```python\n(.*?)```", markdown, re.DOTALL)
    assert match, f"no python block after {after_heading!r}"
    return textwrap.dedent(match.group(1))


# Mapping names onto the config -------------------------------------------------------------------
def test_hyperparameters_land_on_the_config_keys_of_their_names(tmp_path):
    cfg = make_config(["algorithm=maml"], tmp_path)
    apply_settings(cfg, {"inner_lr": 0.1, "first_order": True, "k_shot": 5, "seed": 3,
                         "meta_batch_size": 2, "allow_nograd": True, "hidden_channels": 16})
    assert cfg.algorithm.inner_lr == 0.1 and cfg.algorithm.first_order is True
    assert cfg.algorithm.allow_nograd is True and cfg.backbone.hidden_channels == 16
    assert cfg.episode.k_shot == 5 and cfg.seed == 3 and cfg.episode.seed == 3
    assert cfg.episode.meta_batch_size == 2 and "meta_batch_size" not in cfg.algorithm


def test_same_settings_build_train_py_initial_weights(tmp_path):
    learner = MetaLearner("maml", seed=3, inner_steps=2, overrides=LAKE)
    L.seed_everything(3, verbose=False)
    _, module = build(make_config(["algorithm=maml", "seed=3", "algorithm.inner_steps=2", *LAKE],
                                  tmp_path))
    ours, theirs = learner.module.state_dict(), module.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_fixed_test_episodes_are_train_py_test_episodes(tmp_path):
    datamodule, _ = build(make_config(["episode.test_episodes=3", *LAKE], tmp_path))
    expected = list(datamodule.test_dataloader())
    sampler = TaskSampler(split="test", overrides=LAKE)
    sampler.sample(4)  # drawing from the stream does not move the fixed episodes
    episodes = list(sampler.fixed_episodes(3))
    assert all(torch.equal(episode.support_x[0], expected[0].support_x[index])
               and torch.equal(episode.query_y[0], expected[0].query_y[index])
               for index, episode in enumerate(episodes))


def test_sampler_stream_is_seeded_and_moves_on():
    first, second = TaskSampler(seed=5, overrides=LAKE), TaskSampler(seed=5, overrides=LAKE)
    batch = first.sample(2)
    assert batch.support_x.shape == (2, 5, 1, 28, 28) and batch.query_y.shape == (2, 75)
    assert torch.equal(batch.support_x, second.sample(2).support_x)
    assert not torch.equal(first.sample(2).support_x, batch.support_x)


# Adaptation ------------------------------------------------------------------------------------
def test_evaluation_takes_the_shape_of_its_tasks_and_refuses_another():
    """A sampler's (or a batch's) shape is the shape evaluated: a 20-way 5-shot sampler is not
    scored 5-way 1-shot because of the function's defaults, and a different explicit shape is
    refused, by evaluate_few_shot and compare_learners alike."""
    learners = [MetaLearner("protonet", seed=seed, overrides=LAKE) for seed in (1, 2)]
    sampler = TaskSampler(n_way=20, k_shot=5, query_size=5, split="test", overrides=LAKE)
    scores = episode_scores(learners[0], sampler, n_episodes=2)
    expected = [learners[0].evaluate(learners[0].adapt(episode.task(0).support),
                                     episode.task(0).query)
                for episode in sampler.fixed_episodes(2)]
    assert scores.tolist() == pytest.approx(expected)
    batch = sampler.sample(3)
    assert episode_scores(learners[0], batch, n_episodes=3).shape == (3,)
    for tasks, message in ((sampler, "n_way=5, but the sampler draws n_way=20"),
                           (batch, "n_way=5, but the tasks are n_way=20")):
        for evaluate in (lambda: evaluate_few_shot(learners[0], tasks, n_way=5, n_episodes=2),
                         lambda: compare_learners(learners, tasks, n_way=5, n_episodes=2)):
            assert message in user_error(evaluate)
    assert "k_shot=1, but the sampler draws k_shot=5" in user_error(
        lambda: evaluate_few_shot(learners[0], sampler, k_shot=1, n_episodes=2))


def test_maml_adapt_takes_n_steps_of_sgd_on_the_support_set():
    torch.manual_seed(0)
    learner = MetaLearner("maml", model=conv_net(5), inner_lr=0.1, transductive_bn=False,
                          overrides=LAKE)
    task = TaskSampler(split="test", overrides=LAKE).sample().task(0)
    reference = copy.deepcopy(learner.module.learner.module).eval()
    unadapted = reference(task.query_x)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(reference(task.support_x), task.support_y).backward()
        optimizer.step()
    assert torch.allclose(learner.adapt(task.support, n_steps=0)(task.query_x), unadapted)
    adapted = learner.adapt({"x": task.support_x, "y": task.support_y}, n_steps=3)
    assert torch.allclose(adapted(task.query_x), reference(task.query_x), atol=1e-5)
    assert torch.equal(adapted.predict(task.query_x), reference(task.query_x).argmax(-1))
    expected = (reference(task.query_x).argmax(-1) == task.query_y).float().mean().item()
    assert learner.evaluate(adapted, task.query) == pytest.approx(expected)


def test_anil_takes_a_user_network_as_its_body():
    net = conv_net(64)
    learner = MetaLearner("anil", model=net, overrides=LAKE)
    assert learner.module.body.model is net
    assert learner.module.learner.module.in_features == 64  # the layer ANIL adds and adapts
    task = TaskSampler(overrides=LAKE).sample().task(0)
    assert learner.adapt(task.support, n_steps=1)(task.query_x).shape == (75, 5)


@pytest.mark.slow
def test_readme_example_runs_and_its_maml_learner_adapts(tmp_path, monkeypatch):
    """The README's API example, run as written; then its meta-trained MAML on the user's own
    network must gain from adapting: after one inner step against none, on 100 test tasks."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(python_block((ROOT / "README.md").read_text(), "## Python API"), namespace)
    learner, test_sampler, my_net = namespace["learner"], namespace["test_sampler"], namespace["my_net"]
    assert (tmp_path / "outputs" / "api_example" / "maml.ckpt").is_file()
    adapted = mean_accuracy(learner, test_sampler, 100, n_steps=1)
    unadapted = mean_accuracy(learner, test_sampler, 100, n_steps=0)
    assert adapted >= 0.45 and adapted >= unadapted + 0.2, (adapted, unadapted)
    # the user's network is the learner that was meta-trained (not a copy)
    assert learner.module.learner.module.model is my_net
    # the loaded checkpoint scores the same
    again = namespace["again"]
    assert mean_accuracy(again, test_sampler, 20, n_steps=1) == pytest.approx(
        mean_accuracy(learner, test_sampler, 20, n_steps=1))


@pytest.mark.slow
def test_user_embedding_with_protonet_fits_and_beats_its_untrained_self(tmp_path):
    torch.manual_seed(0)
    net = conv_net(64)
    untrained = copy.deepcopy(net)
    learner = MetaLearner("prototypical", model=net, val_episodes=50, overrides=LAKE,
                          output_dir=tmp_path)
    result = learner.fit(TaskSampler(n_way=20, k_shot=1, query_size=5, seed=1, overrides=LAKE),
                         steps=150)
    assert Path(result["best_checkpoint"]).is_file() and Path(result["last_checkpoint"]).is_file()
    assert "val/acc" in result and learner.steps_taken == 150

    test = TaskSampler(split="test", overrides=LAKE)
    trained, ci95 = evaluate_few_shot(learner, test, n_way=5, k_shot=1, n_episodes=100)
    baseline = MetaLearner("prototypical", model=untrained, overrides=LAKE)
    before, _ = evaluate_few_shot(baseline, test, n_way=5, k_shot=1, n_episodes=100)
    assert trained >= 0.8 and trained >= before + 0.1, (trained, before)
    assert 0 < ci95 < 0.05

    # the adapted model learns from its support set: relabelling it relabels the predictions
    task = next(test.fixed_episodes(1)).task(0)
    predictions = learner.adapt(task.support).predict(task.query_x)
    relabelled = learner.adapt((task.support_x, (task.support_y + 1) % 5)).predict(task.query_x)
    assert torch.equal(relabelled, (predictions + 1) % 5)

    # a fit checkpoint reloads onto a fresh network of the same class
    again = MetaLearner.load(result["last_checkpoint"], model=conv_net(64))
    assert evaluate_few_shot(again, test, n_way=5, k_shot=1, n_episodes=20) == pytest.approx(
        evaluate_few_shot(learner, test, n_way=5, k_shot=1, n_episodes=20))


# Checkpoints shared with train.py and eval.py ------------------------------------------------------
@pytest.mark.slow
def test_checkpoints_are_shared_with_train_and_eval(trained_protonet, tmp_path):
    record, run_dir = trained_protonet
    learner = MetaLearner.load(run_dir / record["tested_checkpoint"], output_dir=tmp_path)
    dataset = [f"dataset.{key}={value}" for key, value in learner.config.dataset.items()
               if not key.startswith("_")]
    test = TaskSampler(split="test", n_way=record["n_way"], k_shot=record["k_shot"],
                       query_size=record["query_size"], seed=record["eval_seed"], overrides=dataset)
    mean, ci95 = evaluate_few_shot(learner, test, record["n_way"], record["k_shot"],
                                   n_episodes=record["test_episodes"])
    assert mean == pytest.approx(record["test_acc"], abs=1e-6)
    assert ci95 == pytest.approx(record["test_acc_ci95"], abs=1e-6)

    saved = learner.save(tmp_path / "api.ckpt")
    subprocess.run([sys.executable, "eval.py", f"ckpt_path={saved}", "episode.test_episodes=50",
                    f"hydra.run.dir={tmp_path / 'eval'}"], cwd=ROOT, check=True,
                   capture_output=True)
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    mean_50, _ = evaluate_few_shot(learner, test, record["n_way"], record["k_shot"], n_episodes=50)
    assert evaluated["test_acc"] == pytest.approx(mean_50, abs=1e-6)


# meta_learning.py --------------------------------------------------------------------------------
TINY = ["--set", "dataset.split=lake", "--set", "dataset.rotations=false", "--set",
        "episode.val_episodes=10", "--set", "episode.test_episodes=20", "--set",
        "backbone.hidden_channels=16"]


def run_script(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True)


def numbers(results_file: Path) -> dict:
    record = json.loads(results_file.read_text())
    return {key: value for key, value in record.items()
            if key not in ("wall_time_s", "tested_checkpoint")}


@pytest.mark.slow
def test_meta_learning_py_gives_train_py_results(tmp_path):
    run_script("meta_learning.py", "--algorithm", "prototypical", "--way", "5", "--shots", "1",
               "--query", "5", "--tasks", "40", "--seed", "7", "--output-dir",
               str(tmp_path / "flags"), *TINY)
    run_script("train.py", "algorithm=protonet", "episode.n_way=5", "episode.k_shot=1",
               "episode.query_size=5", "episode.num_tasks=40", "num_epochs=1", "seed=7",
               f"hydra.run.dir={tmp_path / 'hydra'}", *TINY[1::2])
    flags = numbers(tmp_path / "flags" / "results.json")
    assert flags == numbers(tmp_path / "hydra" / "results.json")
    assert flags["algorithm"] == "protonet" and flags["train_steps"] == 40


@pytest.mark.skipif(not SPEC.is_file(), reason="the product spec lives beside the repository")
def test_the_spec_examples_copy_is_the_spec():
    """test_spec_examples_run reads a copy of the SPEC's entry points (so that it runs on a clean
    clone); where the SPEC is at hand, the copy must still be it."""
    spec = SPEC.read_text()
    section = spec[spec.index("## 1. Entry points"):spec.index("## 2. Algorithms")]
    assert SPEC_COPY.read_text() == section


@pytest.mark.slow
def test_spec_examples_run(tmp_path, monkeypatch):
    spec = SPEC_COPY.read_text()
    # The API block uses names the spec leaves to the reader; define them, then run it as written.
    torch.manual_seed(0)
    test_tasks = TaskSampler(split="test", overrides=LAKE)
    task = test_tasks.sample().task(0)
    namespace = {"my_net": conv_net(5), "support_set": task.support, "query_set": task.query,
                 "test_tasks": test_tasks}
    monkeypatch.chdir(tmp_path)
    exec(python_block(spec, "4. A Python API"), namespace)
    learner, adapted = namespace["learner"], namespace["adapted"]
    assert namespace["acc"] == pytest.approx(
        (adapted.predict(task.query_x) == task.query_y).float().mean().item())
    assert isinstance(namespace["loss"], float) and learner.steps_taken == 1
    assert (learner.config.algorithm.inner_lr, learner.config.algorithm.inner_steps) == (0.01, 5)
    assert 0 < namespace["ci95"] < 0.1

    # The flag-style commands, with a budget appended (a later flag wins).
    commands = re.findall(r"`python meta_learning\.py ([^`]+)`", spec)
    assert len(commands) == 2
    for index, command in enumerate(commands):
        run_dir = tmp_path / f"command_{index}"
        run_script("meta_learning.py", *shlex.split(command), "--tasks", "8",
                   "--output-dir", str(run_dir), *TINY)
        record = json.loads((run_dir / "results.json").read_text())
        shots = int(re.search(r"--shots (\d+)", command).group(1))
        assert record["k_shot"] == shots and record["train_steps"] >= 1
        assert record["algorithm"] == ("maml" if "maml" in command else "protonet")


# Bad input: one line naming the problem ----------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--algorithm", "foo"], "error: argument --algorithm: invalid choice: 'foo' (choose from "
                             "'anil', 'baseline', 'baseline_pp', 'fomaml'"),
    (["--shots", "0"], "error: argument --shots: '0' is not a whole number >= 1"),
    (["--algorithm", "prototypical", "--inner-steps", "5"],
     "error: --inner-steps does not apply to protonet (it has no inner_steps setting)"),
    (["--set", "+algorithm.inner_lrr=0.1"], "error: algorithm.inner_lrr is not a setting of "
                                           "metalearn.algorithms.protonet.ProtoNet; its settings"),
    (["--set", "dataset=imagenet"], "error: unknown dataset 'imagenet'; choose one of: cifar_fs, "
                                    "cub, fc100, features, "),
])
def test_meta_learning_py_bad_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_status:
        meta_learning_main(argv)
    assert exit_status.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(message), error


@pytest.mark.parametrize("make,message", [
    (lambda: MetaLearner("foo"), "unknown algorithm 'foo'; choose one of: anil, baseline, baseline_pp, fomaml, maml"),
    (lambda: MetaLearner("maml", inner_lrr=0.1),
     "unknown hyperparameter 'inner_lrr' for maml on omniglot; valid: allow_nograd, allow_unused"),
    (lambda: MetaLearner("maml", dataset="imagenet"), "unknown dataset 'imagenet'; choose one of: "
                                                      "cifar_fs, cub, fc100"),
    (lambda: MetaLearner("maml", model=conv_net(64)),
     "with algorithm.output_layer=false the network itself is the learner and must output 5 "
     "values per example"),
    (lambda: MetaLearner("protonet", model=nn.Linear(10, 4)), "model Linear cannot take a batch "
                                                              "of inputs of shape (1, 28, 28)"),
    (lambda: MetaLearner("anil", model=conv_net(5), output_layer=False),
     "anil adapts only the output layer"),
    (lambda: TaskSampler(k_shot=0), "episode.k_shot=0 must be a whole number >= 1"),
    (lambda: TaskSampler(split="validation"), "split='validation' is not one of: train, val, test"),
    (lambda: TaskSampler(n_way=2000), "episode.n_way=2000 is more than the"),
])
def test_api_bad_arguments_are_clear_errors(make, message):
    with pytest.raises(UserError) as caught:
        make()
    assert str(caught.value).startswith(message), str(caught.value)


def test_api_bad_sets_and_steps_are_clear_errors():
    learner = MetaLearner("protonet", overrides=LAKE)
    task = TaskSampler(overrides=LAKE).sample().task(0)
    cases = [
        (lambda: learner.adapt([task.support_x]), "support_set must be {'x': inputs, 'y': "
                                                  "targets} or (inputs, targets); got list"),
        (lambda: learner.adapt((task.support_x, task.support_y[:3])),
         "support_set has 5 inputs but 3 targets"),
        (lambda: learner.adapt((task.support_x[:, :, :20], task.support_y)),
         "support_set x has shape (5, 1, 20, 28); this protonet learner takes [examples, 1, 28, "
         "28]"),
        (lambda: learner.adapt(((task.support_x * 255).to(torch.uint8), task.support_y)),
         "support_set x holds uint8 pixels (0-255); the learner takes the floats the dataset's "
         "loader makes: x.float() / 255"),
        (lambda: learner.meta_train_step("tasks"), "tasks must be the TaskBatch of "
                                                   "TaskSampler.sample"),
        (lambda: evaluate_few_shot(learner, TaskSampler(overrides=LAKE).sample(2), n_episodes=5),
         "tasks hold 2 episodes, fewer than n_episodes=5"),
        (lambda: MetaLearner("maml", overrides=LAKE).fit(TaskSampler(n_way=20, overrides=LAKE)),
         "n_way=20, but this maml learner has 5 outputs"),
    ]
    for make, message in cases:
        with pytest.raises(UserError) as caught:
            make()
        assert str(caught.value).startswith(message), str(caught.value)


def test_eval_of_a_user_network_checkpoint_says_how_to_load_it(tmp_path):
    path = MetaLearner("protonet", model=conv_net(64), overrides=LAKE).save(tmp_path / "user.ckpt")
    with pytest.raises(UserError) as caught:
        MetaLearner.load(path)
    assert str(caught.value).startswith(
        "this model was trained with a user-defined network (torch.nn.modules.container."
        "Sequential); rebuild it in Python with MetaLearner.load(path, model=<that network>)")
    result = subprocess.run([sys.executable, "eval.py", f"ckpt_path={path}",
                             f"hydra.run.dir={tmp_path / 'eval'}"], check=False, cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: this model was trained with a user-defined network" in result.stderr
