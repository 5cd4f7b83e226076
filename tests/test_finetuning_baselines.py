"""The fine-tuning baselines (baseline, baseline_pp, rfs): their stream of meta-train examples,
their test-time classifiers against independent references (the authors' loops, scikit-learn),
self-distillation, resume, and learning on Omniglot against the measured budget and against the
same classifier on a randomly initialised backbone."""

from __future__ import annotations

import copy
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

from metalearn import MetaLearner, TaskSampler
from metalearn.algorithms.baseline import DAMPENING, FINETUNE_SEED, MOMENTUM, WEIGHT_DECAY
from metalearn.algorithms.baseline_pp import NORM_EPSILON
from metalearn.algorithms.rfs import RFS
from metalearn.data.datamodule import ExampleStream
from metalearn.data.episodes import ClassExamples, ExampleBatch, seeded_generator
from metalearn.data.task_family import ClassificationTaskFamily
from metalearn.errors import UserError
from metalearn.evaluation.protocol import score_episodes
from metalearn.run import engine
from metalearn.run.build import build
from metalearn.run.training import train
from tests.budgets import BUDGETS
from tests.conftest import ROOT, make_config

TINY = ["dataset.split=lake", "dataset.rotations=false", "episode.val_episodes=4",
        "episode.test_episodes=8", "backbone.hidden_channels=8"]


def coded_family(counts: list[int]) -> ClassificationTaskFamily:
    """Feature 'examples' whose value says their class and place: class c's j-th is 100 c + j."""
    values = torch.cat([100.0 * c + torch.arange(n) for c, n in enumerate(counts)])
    offsets = torch.tensor([0, *np.cumsum(counts)])
    split = ClassExamples(values.unsqueeze(1), offsets, tuple(map(str, range(len(counts)))))
    return ClassificationTaskFamily({"train": split, "val": split, "test": split})


# The stream of examples ------------------------------------------------------------------------
def test_each_pass_takes_every_example_once_with_its_class_in_a_seeded_order():
    family = coded_family([5, 3, 7, 4])  # 19 examples, classes of different sizes
    stream = ExampleStream(family, batch_size=4, seed=3, length=100)
    assert stream.items_per_pass == 5
    passes = []
    for start in (0, 5):
        batches = [stream[i] for i in range(start, start + 5)]
        values = torch.cat([b.x.flatten() for b in batches])
        labels = torch.cat([b.y for b in batches])
        assert sorted(values.tolist()) == sorted(family.splits["train"].examples.flatten().tolist())
        assert torch.equal(labels, (values // 100).long())  # each example with its own class
        passes.append(values)
    assert not torch.equal(passes[0], passes[1])  # each pass in its own order
    # any item regenerates alone, whatever was drawn before (exact resume, workers)
    again = ExampleStream(family, batch_size=4, seed=3, length=100)
    assert torch.equal(again[7].x, stream[7].x) and torch.equal(again[7].y, stream[7].y)
    assert not torch.equal(ExampleStream(family, 4, seed=4, length=100)[0].x, stream[0].x)


def test_ranks_share_each_batch_between_them():
    family = coded_family([6, 6, 6])
    whole = ExampleStream(family, batch_size=6, seed=0, length=10)[2]
    halves = [ExampleStream(family, 6, 0, 10, rank=r, world_size=2)[2] for r in (0, 1)]
    assert sorted(torch.cat([h.x for h in halves]).flatten().tolist()) == sorted(
        whole.x.flatten().tolist())
    assert [len(h.x) for h in halves] == [3, 3]


def test_the_baselines_train_on_examples_and_an_epoch_is_one_pass(tmp_path):
    datamodule, model = build(make_config(["algorithm=baseline", "algorithm.batch_size=50",
                                           *TINY], tmp_path))
    examples = datamodule.tasks.num_examples("train")
    assert model.trains_on_examples and model.classifier.out_features == (
        datamodule.tasks.num_classes("train"))
    loader = datamodule.train_dataloader()
    assert len(loader) == -(-examples // 50)
    batch = loader.dataset[0]
    assert isinstance(batch, ExampleBatch) and batch.x.shape == (50, 1, 28, 28)
    loader.load_state_dict({"next_train_item": len(loader) + 3})  # resumed in pass 1
    assert list(loader.sampler)[:2] == [len(loader) + 3, len(loader) + 4]
    with pytest.raises(UserError, match="pre-trains on meta-train examples"):
        model.training_step(datamodule.val_dataloader().dataset[0], 0)


# Test-time classifiers against independent references ---------------------------------------
def finetuned_alone(model, support, labels, query, parameters, classify) -> torch.Tensor:
    """The authors' fine-tuning loop (methods/baselinefinetune.py) for one task, on a reference
    classifier set to the same initial weights, with the same mini-batch order."""
    optimizer = torch.optim.SGD(parameters, lr=model.finetune_lr, momentum=MOMENTUM,
                                dampening=DAMPENING, weight_decay=WEIGHT_DECAY)
    generator = seeded_generator(FINETUNE_SEED)
    model.initial_heads(1, int(labels.max()) + 1, support.shape[-1], generator)  # same draws
    for _ in range(model.finetune_epochs):
        order = torch.randperm(len(support), generator=generator)
        for start in range(0, len(support), model.finetune_batch_size):
            picked = order[start:start + model.finetune_batch_size]
            loss = F.cross_entropy(classify(support[picked]), labels[picked])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return classify(query)


def reference_classifier(algorithm: str, model, initial: list[torch.Tensor]):
    """(parameters, classify): nn.Linear for Baseline; for Baseline++ the authors' distLinear,
    torch's weight norm per class on features divided by their norm + 1e-5, times the scale."""
    dims = initial[0].shape[-1]
    if algorithm == "baseline":
        linear = nn.Linear(dims, 5).double()
        values = [initial[0], initial[1]]
        classify = linear
    else:
        linear = nn.utils.parametrizations.weight_norm(nn.Linear(dims, 5, bias=False).double(),
                                                       dim=0)
        values = [initial[1].unsqueeze(1), initial[0]]  # original0 = g [N, 1], original1 = v

        def classify(x):
            return model.head_scale(5) * linear(x / (x.norm(dim=-1, keepdim=True) + NORM_EPSILON))
    parameters = list(linear.parameters())
    with torch.no_grad():
        for parameter, value in zip(parameters, values, strict=True):
            parameter.copy_(value)
    return parameters, classify


@pytest.mark.parametrize("algorithm", ["baseline", "baseline_pp"])
def test_fine_tuning_a_batch_of_tasks_is_the_authors_loop_on_each(tmp_path, algorithm):
    _, model = build(make_config([f"algorithm={algorithm}", "algorithm.finetune_epochs=20",
                                  *TINY], tmp_path))
    support, labels, query = random_tasks()
    scores = model.fit_classifiers(support, labels)(query)
    initial = model.initial_heads(1, 5, support.shape[-1], seeded_generator(FINETUNE_SEED))
    for task in range(len(support)):
        parameters, classify = reference_classifier(algorithm, model,
                                                    [part[0].double() for part in initial])
        expected = finetuned_alone(model, support[task], labels[task], query[task], parameters,
                                   classify)
        assert torch.allclose(scores[task], expected, atol=1e-9), task
    # fine-tuning learns: the support loss falls below the initial classifier's (slowly for
    # Baseline++, whose scores are at most 2 norms: 1.57 -> 1.29 here)
    def support_loss(head_scores):
        return F.cross_entropy(head_scores.flatten(0, 1), labels.flatten()).item()
    start = [part.double() for part in initial]
    assert support_loss(model.fit_classifiers(support, labels)(support)) < 0.9 * support_loss(
        model.head_scores([part.expand(3, *part.shape[1:]) for part in start], support))


def random_tasks(tasks=3, n_way=5, shots=3, queries=4, dims=16):
    """Gaussian classes around random centres, in float64."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(tasks, n_way, dims, generator=generator, dtype=torch.float64)
    labels = torch.arange(n_way).repeat(shots)[torch.randperm(n_way * shots, generator=generator)]
    query_labels = torch.arange(n_way).repeat(queries)

    def around(picked):
        return centres[:, picked] + torch.randn(tasks, len(picked), dims, generator=generator,
                                                dtype=torch.float64)
    return around(labels), labels.expand(tasks, -1), around(query_labels)


def test_rfs_logistic_regression_is_scikit_learns_on_omniglot_features(tmp_path):
    """On the normalised features of real Omniglot test episodes (an untrained backbone's: the
    solver, not the features, is under test), the same predictions as the authors' scikit-learn
    LogisticRegression, and accuracy within 1 point."""
    datamodule, model = build(make_config(["algorithm=rfs", "episode.test_episodes=40",
                                           *TINY[:2]], tmp_path))
    episodes = [datamodule.test_dataloader().dataset[i] for i in range(40)]
    ours, theirs, gaps = [], [], []
    for batch in episodes:
        support = model.batch_features(batch.support_x)
        query = model.batch_features(batch.query_x)
        scores = model.fit_classifiers(support, batch.support_y)(query)[0]
        reference = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(
            support[0].double().numpy(), batch.support_y[0].numpy())
        predicted = torch.from_numpy(reference.predict(query[0].double().numpy()))
        probabilities = torch.from_numpy(reference.predict_proba(query[0].double().numpy()))
        gaps.append((scores.softmax(-1).double() - probabilities).abs().max().item())
        ours.append((scores.argmax(-1) == batch.query_y[0]).float().mean().item())
        theirs.append((predicted == batch.query_y[0]).float().mean().item())
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.01
    # the same minimum, to scikit-learn's default tolerance (1e-4), where it stops
    assert max(gaps) < 1e-3
    assert np.mean(ours) > 0.3  # features of random weights already separate classes


def test_fitting_runs_in_float32_under_mixed_precision(tmp_path, monkeypatch):
    _, model = build(make_config(["algorithm=rfs", *TINY], tmp_path))
    batch = build(make_config(["algorithm=rfs", *TINY], tmp_path))[0].val_dataloader().dataset[0]
    seen = []
    fit = model.fit_classifiers
    monkeypatch.setattr(model, "fit_classifiers",
                        lambda features, labels: seen.append(features.dtype) or fit(features, labels))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        predictions = model.eval().predict_episodes(batch)
    assert seen == [torch.float32] and predictions.dtype == torch.float32


# Self-distillation ---------------------------------------------------------------------------
class StudentSnapshots(L.Callback):
    """The student's weights as each epoch ends, named as in the teacher."""

    def __init__(self):
        self.at_end = {}

    def on_train_epoch_end(self, trainer, module):
        self.at_end[trainer.current_epoch] = {
            f"{part}.{name}": value.clone() for part in ("backbone", "classifier")
            for name, value in getattr(module, part).state_dict().items()}


@pytest.mark.slow
def test_each_generation_learns_from_the_last_from_a_new_start(tmp_path, monkeypatch):
    snapshots, first_step = StudentSnapshots(), {}
    original = RFS.meta_train_loss

    def recorded(module, batch):
        loss, scores = original(module, batch)
        if module.current_epoch == 1 and not first_step:
            with torch.no_grad():
                module.teacher.eval()
                taught = module.teacher["classifier"](module.teacher["backbone"](batch.x))
                # half cross-entropy, half T^2 KL to the teacher at T = 4
                cross_entropy = F.cross_entropy(scores, batch.y)
                expected = 0.5 * cross_entropy + 0.5 * 16 * F.kl_div(
                    F.log_softmax(scores / 4, -1), F.softmax(taught / 4, -1),
                    reduction="batchmean")
            first_step.update(loss=loss.item(), expected=expected.item(),
                              cross_entropy=cross_entropy.item(),
                              teacher=copy.deepcopy(module.teacher.state_dict()),
                              student=module.classifier.weight.detach().clone())
        return loss, scores

    def make_trainer(*args, **kwargs):
        trainer = original_make_trainer(*args, **kwargs)
        trainer.callbacks.append(snapshots)
        return trainer

    original_make_trainer = engine.make_trainer
    monkeypatch.setattr(RFS, "meta_train_loss", recorded)
    monkeypatch.setattr(engine, "make_trainer", make_trainer)
    record = train(make_config(["algorithm=rfs", "algorithm.distill_generations=1",
                                "num_epochs=2", "+trainer.limit_train_batches=3",
                                "algorithm.batch_size=16", *TINY], tmp_path))
    assert record["train_steps"] == 6
    # generation 1's teacher is the student as epoch 0 ended ...
    end_of_first = snapshots.at_end[0]
    assert all(torch.equal(first_step["teacher"][name], value)
               for name, value in end_of_first.items())
    # ... its student starts again from a new initialisation ...
    assert not torch.equal(first_step["student"], end_of_first["classifier.weight"])
    # ... and learns from both the labels and the teacher
    assert first_step["loss"] == pytest.approx(first_step["expected"], rel=1e-6)
    assert first_step["loss"] != pytest.approx(first_step["cross_entropy"], rel=1e-3)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(checkpoint["state_dict"]["generation"]) == 1


def test_generations_must_split_the_epochs(tmp_path):
    with pytest.raises(UserError, match="num_epochs=3 must be a multiple of 2"):
        train(make_config(["algorithm=rfs", "algorithm.distill_generations=1", "num_epochs=3",
                           "+trainer.limit_train_batches=1", *TINY], tmp_path))


# Resume and data parallel ----------------------------------------------------------------------
# a fully connected backbone: without BatchNorm, two processes on half batches compute exactly
# what one computes on the whole (BatchNorm statistics are per process under DDP)
SMALL = ["algorithm=baseline", "backbone=mlp", "backbone.hidden_sizes=[32]",
         "algorithm.batch_size=16", "num_epochs=1", "+trainer.limit_train_batches=6",
         "test_ckpt=last", "~logger", *TINY[:-1]]


def last_state(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_pretraining_resumed_inside_a_pass_reaches_the_uninterrupted_weights(tmp_path):
    # a numbered checkpoint every 3 steps, to resume from step 3 of 6 in another directory
    steps = ["callbacks=step_checkpoints", "callbacks.step_checkpoint.every_n_train_steps=3",
             "callbacks.step_checkpoint.save_top_k=-1",
             "+callbacks.step_checkpoint.filename='step_{step}'"]
    train(make_config([*SMALL, *steps], tmp_path / "whole"))
    middle = tmp_path / "whole" / "checkpoints" / "step_step=3.ckpt"
    assert torch.load(middle, weights_only=False)["global_step"] == 3
    train(make_config([*SMALL, *steps, f"ckpt_path='{middle}'"], tmp_path / "resumed"))
    whole, resumed = last_state(tmp_path / "whole"), last_state(tmp_path / "resumed")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    start = build(make_config(SMALL, tmp_path))[1].state_dict()
    assert not torch.equal(start["classifier.weight"], whole["classifier.weight"])


@pytest.mark.slow
def test_two_process_pretraining_matches_one_process(tmp_path):
    """Each rank takes half of every batch; the weights are those of one process (float64 and
    SGD, for the reasons in test_resume_precision_ddp's test)."""
    overrides = [*SMALL, "algorithm.optimizer._target_=torch.optim.SGD", "algorithm.outer_lr=0.05",
                 "trainer.precision=64-true"]
    for name, extra in (("one", []), ("two", ["trainer=ddp_cpu"])):
        subprocess.run([sys.executable, "train.py", *overrides, *extra,
                        f"hydra.run.dir={tmp_path / name}"], cwd=ROOT, check=True,
                       capture_output=True)
    one, two = last_state(tmp_path / "one"), last_state(tmp_path / "two")
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-9, atol=1e-11), name
    start = build(make_config(overrides, tmp_path))[1].state_dict()
    assert not torch.allclose(start["classifier.weight"].double(), one["classifier.weight"])


# Learning ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["baseline", "baseline_pp", "rfs"])
def test_pretraining_learns_far_beyond_the_same_classifier_on_a_random_backbone(tmp_path,
                                                                                algorithm):
    budget = BUDGETS[f"{algorithm} (lake)"]
    record = train(make_config(budget.overrides, tmp_path / "run"))
    budget.check(record)
    # the backbone the run started from (same seed), its classifier fitted the same way, on the
    # same test episodes
    cfg = make_config(budget.overrides, tmp_path / "untrained")
    L.seed_everything(cfg.seed, verbose=False)
    datamodule, untrained = build(cfg)
    untrained.eval()
    random_backbone = torch.cat([score_episodes(untrained, batch)
                                 for batch in datamodule.test_dataloader()]).mean().item()
    assert record["test_acc"] - random_backbone > 3 * record["test_acc_ci95"], (
        record["test_acc"], random_backbone)


@pytest.mark.slow
def test_the_api_pretrains_in_steps_and_refuses_tasks(tmp_path):
    lake = ["dataset.split=lake", "dataset.rotations=false"]
    learner = MetaLearner("baseline", overrides=[*lake, "backbone.hidden_channels=8",
                                                 "episode.val_episodes=4"],
                          output_dir=tmp_path, batch_size=16)
    sampler = TaskSampler("omniglot", overrides=lake)
    start = learner.module.classifier.weight.detach().clone()
    learner.fit(sampler, steps=4, epochs=2)
    assert learner.steps_taken == 4
    assert not torch.equal(start, learner.module.classifier.weight)
    with pytest.raises(UserError, match=r"2000 steps an epoch, more than the \d+ batches of a pass"):
        learner.fit(sampler, steps=2000)
    with pytest.raises(UserError, match="pre-trains on meta-train examples"):
        learner.meta_train_step(sampler.sample(2))
    vinyals = TaskSampler("omniglot")
    with pytest.raises(UserError, match="classes of the dataset it was built for"):
        learner.fit(vinyals, steps=2)
