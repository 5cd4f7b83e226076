"""Exact resume after a SIGKILL, mixed precision on the CPU (float32 inner loops, bf16 training),
and 2-process CPU DDP against one process on the same tasks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metalearn.evaluation.plots import csv_rows
from metalearn.run.build import build
from metalearn.run.checkpoints import RUN_STATE_KEY
from metalearn.run.training import train
from tests.conftest import ROOT, make_config

TINY = ["dataset.split=lake", "dataset.rotations=false", "episode.val_episodes=10",
        "episode.test_episodes=20", "trainer.deterministic=true", "seed=3"]


def train_py(*overrides: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    command = [sys.executable, "train.py", *overrides]
    if wait:
        return subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def last_state(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=False)
    return checkpoint["state_dict"]


def saved_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


# Exact resume ------------------------------------------------------------------------------------
# 2 epochs of 30 outer steps, the metrics of every step in metrics.csv, last.ckpt every 3 steps
RESUMED = ["algorithm=protonet", "episode.num_tasks=30", "num_epochs=2",
           "backbone.hidden_channels=16", "callbacks=step_checkpoints",
           "callbacks.step_checkpoint.every_n_train_steps=3", "trainer.log_every_n_steps=1", *TINY]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train_py(*RESUMED, f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_run_killed_at_a_random_step_resumes_to_the_uninterrupted_run(uninterrupted_run,
                                                                       tmp_path, seed):
    """SIGKILL at a random step (after the checkpoint of that step, so the run has logged steps
    its last checkpoint does not hold), resume with ckpt_path=last: the same weights, results
    and metrics.csv as the uninterrupted run, and a wall time that counts the interrupted part."""
    kill_after = random.Random(seed).randrange(3, 57)
    process = train_py(*RESUMED, f"hydra.run.dir={tmp_path}", wait=False)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while saved_step(last) < kill_after and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_at = saved_step(last)
    assert kill_after <= interrupted_at < 60
    assert not (tmp_path / "results.json").exists()
    interrupted_time = torch.load(last, weights_only=False)[RUN_STATE_KEY]["wall_time_s"]

    resume_started = time.time()
    train_py(*RESUMED, f"hydra.run.dir={tmp_path}", "ckpt_path=last")
    resume_time = time.time() - resume_started
    whole, resumed = last_state(uninterrupted_run), last_state(tmp_path)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    expected = json.loads((uninterrupted_run / "results.json").read_text())
    result = json.loads((tmp_path / "results.json").read_text())
    for key in ("test_acc", "test_acc_ci95", "best_val_acc", "train_steps", "tested_checkpoint"):
        assert result[key] == expected[key], key
    # the whole history, steps before the kill included, and nothing logged twice
    history = csv_rows(tmp_path / "csv" / "metrics.csv")
    assert history == csv_rows(uninterrupted_run / "csv" / "metrics.csv")
    assert [row["step"] for row in history if "train/loss" in row] == list(range(60))
    # the wall time counts the interrupted run's time up to its checkpoint, then the resumed run's
    assert interrupted_time < result["wall_time_s"] <= interrupted_time + resume_time


def test_the_stream_position_is_saved_and_resumes_inside_the_epoch(tmp_path):
    datamodule, _ = build(make_config(["episode.num_tasks=10", *TINY], tmp_path))
    loader = datamodule.train_dataloader()
    assert loader.state_dict() == {"next_train_item": 0}
    loader.load_state_dict({"next_train_item": 13})  # epoch 1 of 10 items, 3 done
    assert list(loader.sampler) == list(range(13, 20))  # without set_epoch, as Lightning resumes
    loader.sampler.set_epoch(2)  # later epochs are whole again
    assert list(loader.sampler) == list(range(20, 30))
    # resumed at the end of an epoch, Lightning makes the iterator before it calls set_epoch
    items = iter(loader.sampler)
    loader.sampler.set_epoch(3)
    assert list(items) == list(range(30, 40))


# Mixed precision -------------------------------------------------------------------------------
def meta_gradient(model, batch, dtype: torch.dtype | None = None, loss_scale: float = 1.0):
    """One meta-batch's meta-gradient, all parameters in one vector: under autocast to `dtype`
    (None: float32), the loss scaled as a gradient scaler does."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss, _ = model.meta_train_loss(batch)
    (loss * loss_scale).backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    return torch.cat([parameter.grad.flatten() for parameter in model.parameters()]) / loss_scale


@pytest.mark.parametrize("algorithm", ["maml", "reptile", "meta_lstm"])
def test_mixed_precision_inner_loops_run_in_float32(tmp_path, algorithm):
    """Under autocast (bf16-mixed; float16 is what 16-mixed runs on a GPU) the inner loop runs in
    float32 and only the query pass in 16 bits, so the meta-gradient stays near float32's.
    Measured over six initialisations: MAML 2-5% off in bf16, 0.5-2% in float16; with 16-bit inner
    loops it was 22-58% and float16 overflowed, at any loss scale on one of the six."""
    torch.manual_seed(0)
    cfg = make_config([f"algorithm={algorithm}", "episode.meta_batch_size=2",
                       "backbone.hidden_channels=16", *TINY], tmp_path)
    datamodule, model = build(cfg)
    batch = next(iter(datamodule.train_dataloader()))
    state = {name: value.clone() for name, value in model.state_dict().items()}
    exact = meta_gradient(model, batch)
    for dtype, loss_scale, tolerance in ((torch.bfloat16, 1.0, 0.15), (torch.float16, 2**12, 0.1)):
        model.load_state_dict(state)  # the same BatchNorm running averages
        mixed = meta_gradient(model, batch, dtype, loss_scale)
        assert torch.isfinite(mixed).all(), dtype
        assert (mixed - exact).norm() < tolerance * exact.norm(), dtype


@pytest.mark.parametrize("backend", ["batched", "per_task"])
def test_maml_support_pass_is_float32_and_query_pass_bf16_under_autocast(tmp_path, backend):
    cfg = make_config(["algorithm=maml", f"algorithm.backend={backend}",
                       "episode.meta_batch_size=2", "backbone.hidden_channels=16", *TINY],
                      tmp_path)
    datamodule, model = build(cfg)
    batch = next(iter(datamodule.train_dataloader()))
    full, _ = model.meta_train_loss(batch)
    # the network each backend runs: learn2learn's clones share the learner's modules; the
    # functional backend runs a copy of its structure on all tasks at once
    network = (model.task_batched_loop().network.structure if backend == "batched"
               else model.learner.module)
    activations = []
    first_conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, i, out: activations.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what precision=bf16-mixed runs under
        mixed, _ = model.meta_train_loss(batch)
        adapted, _ = model.adapt_tasks(batch.support_x, batch.support_y, 1)
        adapted_dtypes = {w.dtype for w in (adapted.values() if backend == "batched"
                                            else adapted[0].parameters())}
    # the support passes in float32, then the query passes on the adapted weights in bf16:
    # learn2learn's backend runs both task by task; the functional one adapts all tasks in one
    # pass, and its queries run task by task (autocast does not reach inside vmap)
    support = [torch.float32] * (1 if backend == "batched" else 2)
    expected = support + [torch.bfloat16] * 2
    assert activations[:len(expected)] == expected
    assert adapted_dtypes == {torch.float32}  # the inner-loop weights stay float32
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert abs(mixed.item() - full.item()) < 0.05 * full.item()


@pytest.mark.slow
def test_bf16_mixed_training_on_cpu_learns(tmp_path):
    record = train(make_config(["algorithm=protonet", "trainer.precision=bf16-mixed",
                                "episode.num_tasks=150", "num_epochs=1",
                                "backbone.hidden_channels=32", "episode.test_episodes=100",
                                *TINY], tmp_path))
    assert record["test_acc"] >= 0.6, record  # chance is 0.2


# Data parallel ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["protonet", "maml"])
def test_two_process_cpu_ddp_matches_one_process(tmp_path, algorithm):
    """Each rank takes half of every meta-batch and DDP averages the gradients: the weights must
    be those of one process training on the whole meta-batches.

    Both run in float64: the two runs sum the same gradients in a different order, and a few
    training steps amplify float32's rounding differences (1e-7) to 1e-3 in the weights (seen in
    CI); float64's (1e-16) stay far below the tolerance. The outer optimiser is SGD: Adam divides
    by the gradient's magnitude, so the rounding noise of parameters whose gradient is zero in
    exact arithmetic (conv biases before BatchNorm) would become whole steps."""
    overrides = [f"algorithm={algorithm}", "episode.meta_batch_size=4", "episode.num_tasks=24",
                 "algorithm.optimizer._target_=torch.optim.SGD", "algorithm.outer_lr=0.05",
                 "num_epochs=1", "backbone.hidden_channels=16", "episode.train_n_way=null",
                 "episode.train_query_size=null", "test_ckpt=last", "~logger",
                 "trainer.precision=64-true", *TINY]
    if algorithm == "maml":
        overrides += ["algorithm.test_inner_steps=1"]
    train_py(*overrides, f"hydra.run.dir={tmp_path / 'one'}")
    ddp = train_py(*overrides, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path / 'two'}")
    assert "distributed_backend=gloo" in ddp.stderr + ddp.stdout
    assert "All distributed processes registered. Starting with 2 processes" in (
        ddp.stderr + ddp.stdout)

    one, two = last_state(tmp_path / "one"), last_state(tmp_path / "two")
    # BatchNorm running averages are rank 0's under DDP; the learned weights must agree
    weights = [name for name in one if not name.endswith(
        ("running_mean", "running_var", "num_batches_tracked"))]
    for name in weights:
        assert one[name].dtype == torch.float64, name
        assert torch.allclose(one[name], two[name], rtol=1e-9, atol=1e-11), name
    start = build(make_config(overrides, tmp_path))[1].state_dict()
    assert any(not torch.allclose(start[name].double(), one[name]) for name in weights)  # trained

    single = json.loads((tmp_path / "one" / "results.json").read_text())
    double = json.loads((tmp_path / "two" / "results.json").read_text())
    assert double["train_steps"] == single["train_steps"] == 6
    if algorithm == "maml":
        # test-time BatchNorm uses each task's batch, so the same weights give the same scores;
        # the ranks' halves of the test episodes must be gathered for the mean and interval
        assert double["test_acc"] == pytest.approx(single["test_acc"], abs=1e-6)
        assert double["test_acc_ci95"] == pytest.approx(single["test_acc_ci95"], abs=1e-6)
