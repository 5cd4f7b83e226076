"""Nothing saved is lost and nothing wrong is silent: a run owns its directory, a failed write
stops it, a non-finite loss or score is never a result, and every user mistake is one line
before anything trains."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from metalearn import MetaLearner, TaskSampler
from metalearn.errors import UserError
from metalearn.run import cpu_time
from metalearn.run.compose import compose_config
from metalearn.run.evaluate import evaluate
from metalearn.run.training import train
from tests.conftest import ROOT, make_config
from tests.helpers import user_error

# A few seconds of meta-training.
TINY = ["dataset.split=lake", "dataset.rotations=false", "episode.num_tasks=6", "num_epochs=1",
        "episode.val_episodes=4", "episode.test_episodes=8", "backbone.hidden_channels=8"]
LAKE = TINY[:2]


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error of a run that failed on a user's mistake: exit status 2 and one line, the last
    one printed, without a traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    return last


def strict_json(path: Path) -> dict:
    """results.json, refusing NaN and Infinity (which Python's json would accept)."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)



# A run owns its directory ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_into_a_live_runs_directory_stops_naming_its_process(tmp_path):
    first = subprocess.Popen([sys.executable, "train.py", *TINY, "episode.num_tasks=300",
                              f"hydra.run.dir={tmp_path}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.1)
    second = run_script("train.py", *TINY, f"hydra.run.dir={tmp_path}")
    assert first.wait(timeout=600) == 0
    assert one_line_error(second) == (
        f"error: run directory {tmp_path} is in use by another run (process {first.pid}); wait "
        "for it to end or choose another hydra.run.dir")
    # the first run's results are its own
    assert strict_json(tmp_path / "results.json")["train_steps"] == 300


def test_a_directory_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    record = train(make_config(TINY, tmp_path))
    message = user_error(train, make_config(TINY, tmp_path))
    assert message.startswith(f"run directory {tmp_path} already holds a run; resume it with "
                              "ckpt_path=last, replace it with overwrite=true")
    again = train(make_config([*TINY, "overwrite=true", "seed=7", "num_epochs=2"], tmp_path))
    # the earlier run's files are gone: no last-v1.ckpt, one best checkpoint, this run's results
    checkpoints = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[-1] == "last.ckpt"  # the best and the last
    assert strict_json(tmp_path / "results.json")["seed"] == 7 != record["seed"]
    # last.ckpt holds the last step, whether or not the score improved in the last epoch ...
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == again["train_steps"] == 12
    # ... so resuming a finished run trains no further and tests its best checkpoint again
    resumed = train(make_config([*TINY, "seed=7", "num_epochs=2", "ckpt_path=last"], tmp_path))
    assert resumed["train_steps"] == again["train_steps"]
    assert resumed["test_acc"] == again["test_acc"]


def test_a_moved_run_directory_resumes_and_tests_its_own_checkpoints(tmp_path):
    original = tmp_path / "original"
    record = train(make_config(TINY, original))
    moved = tmp_path / "moved"
    original.rename(moved)
    # the best checkpoint is found in the moved directory (Lightning stored it absolute)
    again = train(make_config([*TINY, "ckpt_path=last"], moved))
    assert again["tested_checkpoint"] == record["tested_checkpoint"] == "checkpoints/epoch_000.ckpt"
    assert again["test_acc"] == record["test_acc"]


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_keeps_its_step_fails_in_one_line_and_resumes(tmp_path):
    overrides = [*TINY, "episode.num_tasks=20", f"hydra.run.dir={tmp_path}"]
    stopped = run_script("train.py", *overrides, "+callbacks.sigterm._target_=tests.helpers.SigtermAtStep",
                         "+callbacks.sigterm.step=3")
    assert one_line_error(stopped) == (
        f"error: stopped by SIGTERM after 3 outer steps, before the meta-test; resume with "
        f"ckpt_path=last (in {tmp_path})")
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 3
    assert not (tmp_path / "results.json").exists()
    resumed = run_script("train.py", *overrides, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert strict_json(tmp_path / "results.json")["train_steps"] == 20


def test_checkpoints_that_cannot_be_written_stop_the_run_before_or_as_they_fail(tmp_path,
                                                                                monkeypatch):
    (tmp_path / "blocked").write_text("a file where a folder should be")
    message = user_error(train, make_config(TINY, tmp_path / "blocked" / "run"))
    assert message.startswith(f"cannot write into {tmp_path / 'blocked' / 'run'} (")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("metalearn.run.checkpoints.torch.save", full_disk)
    message = user_error(train, make_config(TINY, tmp_path / "full"))
    assert message.startswith(f"cannot write the checkpoint {tmp_path / 'full' / 'checkpoints'}")
    assert "No space left on device" in message
    assert not (tmp_path / "full" / "results.json").exists()


# Never a wrong result ----------------------------------------------------------------------------
def test_maml_on_the_sinusoid_takes_the_sinusoids_settings_and_writes_valid_json(tmp_path):
    cfg = make_config(["algorithm=maml", "dataset=sinusoid", "episode.num_tasks=100",
                       "episode.val_episodes=10", "episode.test_episodes=20"], tmp_path)
    assert (cfg.algorithm.inner_lr, cfg.episode.k_shot, cfg.algorithm.test_inner_steps) == (
        0.01, 10, 10)  # the MAML paper's sinusoid settings, not Omniglot's inner_lr of 0.4
    record = train(cfg)
    assert math.isfinite(record["test_mse"]) and record["test_mse"] < 10
    assert strict_json(tmp_path / "results.json")["test_mse"] == record["test_mse"]


def test_a_diverging_run_stops_with_one_line_and_no_result(tmp_path):
    # Omniglot's inner step on the sinusoid: adaptation diverges before the first validation
    message = user_error(train, make_config(["algorithm=maml", "dataset=sinusoid",
                                             "algorithm.inner_lr=100", "episode.num_tasks=50",
                                             "episode.val_episodes=10"], tmp_path))
    assert message.startswith("the meta-val mse became ")
    assert "No checkpoint had a finite meta-val score" in message
    assert "smaller learning rates (algorithm.inner_lr=100, algorithm.outer_lr=0.001)" in message
    assert not (tmp_path / "results.json").exists()
    assert not list(tmp_path.glob("checkpoints/*.ckpt"))


class PoisonWeights(Callback):
    """Makes every weight NaN after `step` outer steps (a divergence, on cue)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))


@pytest.mark.slow
def test_a_non_finite_loss_names_the_last_good_checkpoint_last(tmp_path):
    result = run_script("train.py", *TINY, "num_epochs=2", f"hydra.run.dir={tmp_path}",
                        "+callbacks.poison._target_=tests.test_run_safety.PoisonWeights",
                        "+callbacks.poison.step=8")
    error = one_line_error(result)
    assert error.startswith("error: the meta-training loss became nan at step 8. The last "
                            "checkpoint with a finite meta-val score is "
                            "checkpoints/epoch_000.ckpt (val/acc ")
    assert "Start a new run with smaller learning rates (algorithm.outer_lr=0.001)" in error
    good = torch.load(tmp_path / "checkpoints" / "epoch_000.ckpt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in good["state_dict"].values())
    assert not (tmp_path / "results.json").exists()


# Settings that were accepted and wrong ------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (["episode.n_way=1"], "episode.n_way=1: a classification task needs at least 2 classes"),
    (["algorithm.scheduler.gamma=-1"], "algorithm.scheduler.gamma=-1 must be a number > 0"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 must be a number > 0"),
    (["seed=-5"], "seed=-5 must be a whole number >= 0"),
    (["monitor=val/accuracy"], "monitor='val/accuracy' is not a meta-validation score of "
                               "protonet; use one of: val/acc"),
    (["trainer.precision=17"], "trainer: Precision 17 is invalid. Allowed precision values: "),
    (["trainer.devices=64", "trainer.accelerator=cpu"],
     f"trainer.devices=64 is more than the {os.cpu_count()} CPU cores of this machine"),
    (["dataset.image_size=100000"], "dataset.image_size=100000 needs about "),
    (["callbacks=cpu_time_limit", "callbacks.cpu_time_limit.minutes=0"],
     "callbacks.cpu_time_limit.minutes=0 must be a number > 0"),
])
def test_a_wrong_setting_is_one_line_before_training(tmp_path, overrides, message):
    assert user_error(train, make_config([*LAKE, *overrides], tmp_path)).startswith(message)
    assert not (tmp_path / "config.yaml").exists()


def test_no_gpu_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    message = user_error(train, make_config([*LAKE, "trainer=gpu"], tmp_path))
    assert message == ("trainer.accelerator=gpu, but this machine has no GPU that torch can use; "
                       "use trainer=cpu (or trainer.accelerator=auto)")


def test_the_api_refuses_a_clip_that_would_ascend():
    with pytest.raises(UserError, match=r"^trainer.gradient_clip_val=-1 must be a number > 0$"):
        MetaLearner("maml", overrides=[*LAKE, "trainer.gradient_clip_val=-1"])


@pytest.mark.parametrize("args,message", [
    (["--algorithm", "maml", "--set", "algorithm=protonet"],
     "error: --set algorithm=protonet: choose the algorithm with --algorithm"),
    (["--shots", "5", "--set", "episode.k_shot=1"],
     "error: --set episode.k_shot=1 and --shots both set episode.k_shot; give it once"),
    (["--output-dir", "README.md"], "error: --output-dir README.md is a file; name a directory"),
])
def test_flags_that_contradict_or_misname_are_one_line(args, message, capsys):
    from metalearn.cli.flags import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_tasks_are_whole_meta_batches_rounded_up_and_said(tmp_path, caplog):
    cfg = make_config([*TINY, "episode.num_tasks=10", "episode.meta_batch_size=4"], tmp_path)
    record = train(cfg)
    assert record["train_steps"] == 3  # 12 tasks
    assert ("episode.num_tasks=10 is not a whole number of meta-batches of 4: an epoch is 3 outer "
            "steps (12 tasks)") in caplog.text


# The Python API refuses impossible tasks ---------------------------------------------------------
def test_impossible_tasks_are_one_line_errors():
    protonet = MetaLearner("protonet", overrides=LAKE)
    maml = MetaLearner("maml", overrides=LAKE)
    task = TaskSampler(overrides=LAKE).sample().task(0)
    x, y = task.support
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    cases = [
        (lambda: protonet.adapt((x, y + 3)), "support_set has no example of class 0"),
        (lambda: protonet.adapt((x[y != 2], y[y != 2])), "support_set has no example of class 2"),
        (lambda: protonet.adapt((x, -y)), "support_set labels must lie in 0..0; got -4..0"),
        (lambda: protonet.adapt((nan, y)), "support_set x holds NaN or infinite values"),
        (lambda: protonet.adapt((x[:0], y[:0])), "support_set x is empty"),
        (lambda: maml.adapt((x[:0], y[:0])), "support_set x is empty"),
        (lambda: maml.adapt((x, y + 1)), "support_set labels must lie in 0..4; got 1..5"),
        (lambda: protonet.evaluate(protonet.adapt(task.support), (task.query_x, task.query_y + 5)),
         "query_set labels must lie in 0..4"),
    ]
    for make, message in cases:
        with pytest.raises(UserError) as caught:
            make()
        assert str(caught.value).startswith(message), (message, str(caught.value))


# eval.py and resuming refuse what they cannot do ----------------------------------------------------
@pytest.fixture(scope="module")
def maml_checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("maml")
    train(make_config(["algorithm=maml", *TINY, "episode.meta_batch_size=2"], run_dir))
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("overrides,message", [
    (["backbone.hidden_channels=16"], "eval.py cannot change backbone.hidden_channels: it is part "
                                      "of the model the checkpoint holds (trained with "
                                      "backbone.hidden_channels=8)"),
    (["algorithm=protonet"], "eval.py cannot change algorithm: it is part of the model"),
    (["episode.n_way=10"], "the checkpoint's weights do not fit the model these settings build"),
    (["eval.shots=5"], "eval.shots=5 must be a list of shots such as [1,5,10]"),
])
def test_eval_refuses_what_would_change_the_model(maml_checkpoint, tmp_path, overrides, message):
    overrides = [f"ckpt_path={maml_checkpoint}", *overrides]
    cfg = make_config(overrides, tmp_path, config_name="eval")
    assert user_error(evaluate, cfg, overrides).startswith(message)


def test_eval_without_a_checkpoint_is_one_line(tmp_path):
    error = one_line_error(run_script("eval.py", f"hydra.run.dir={tmp_path}"))
    assert error == ("error: eval.py needs ckpt_path=PATH, a checkpoint written by train.py or "
                     "the Python API")


def test_resuming_from_a_damaged_or_foreign_checkpoint_is_one_line(maml_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(maml_checkpoint.read_bytes()[:1000])
    message = user_error(train, make_config([*TINY, f"ckpt_path={truncated}"], tmp_path / "a"))
    assert message.startswith(f"ckpt_path='{truncated}' is not a readable checkpoint")
    message = user_error(train, make_config([*TINY, f"ckpt_path={maml_checkpoint}"],
                                            tmp_path / "b"))
    assert message == f"ckpt_path='{maml_checkpoint}' is a checkpoint of maml; this run is protonet"
    message = user_error(train, make_config(["algorithm=maml", *TINY, "episode.meta_batch_size=2",
                                             "backbone.hidden_channels=16",
                                             f"ckpt_path={maml_checkpoint}"], tmp_path / "c"))
    assert message.startswith(f"ckpt_path='{maml_checkpoint}' does not fit this run's model")


# Data and sweeps ---------------------------------------------------------------------------------
def test_a_damaged_cache_is_rebuilt_with_one_line(tmp_path, caplog):
    from metalearn.data.cache import cached

    path = tmp_path / "cache.pt"
    torch.save({"images": torch.zeros(3)}, path)
    path.write_bytes(path.read_bytes()[:20])  # truncated

    def check(data):
        if not isinstance(data, dict) or "images" not in data:
            raise ValueError("not a cache of this version")
        return data

    rebuilt = cached(path, lambda: {"images": torch.ones(2)}, check)
    assert torch.equal(rebuilt["images"], torch.ones(2))
    assert f"cache {path} is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert torch.equal(cached(path, lambda: pytest.fail("rebuilt again"), check)["images"],
                       torch.ones(2))
    torch.save({"labels": 1}, path)  # another version's layout
    assert torch.equal(cached(path, lambda: {"images": torch.full((2,), 3.0)}, check)["images"],
                       torch.full((2,), 3.0))


def test_an_unknown_group_value_stops_a_sweep_before_any_job(tmp_path):
    error = one_line_error(run_script("train.py", "-m", "algorithm=protonet,protonett",
                                      f"hydra.sweep.dir={tmp_path}"))
    assert error.startswith("error: unknown algorithm 'protonett'; choose one of:")
    assert not any(path.name.isdigit() for path in tmp_path.iterdir())


@pytest.mark.slow
def test_a_reused_sweep_directory_never_reports_an_earlier_sweeps_results(tmp_path):
    sweep = [*TINY, f"hydra.sweep.dir={tmp_path}"]
    first = run_script("train.py", "-m", "episode.k_shot=1,50", *sweep)
    assert first.returncode == 2  # 50 shots do not fit Omniglot's 20 drawings
    summary = (tmp_path / "summary.md").read_bytes()
    # job 0 holds a finished run: another sweep into the directory is refused before any job
    refused = run_script("train.py", "-m", "episode.k_shot=50,1", "seed=3", *sweep)
    assert one_line_error(refused).startswith(f"error: sweep directory {tmp_path} holds 1 "
                                              "finished job; resume the sweep with ckpt_path=last")
    assert (tmp_path / "summary.md").read_bytes() == summary
    # replacing it, job 0 is refused on its shots: its directory's earlier results are not its
    second = run_script("train.py", "-m", "episode.k_shot=50,1", "seed=3", "overwrite=true", *sweep)
    assert second.returncode == 2
    rows = (tmp_path / "summary.md").read_text().splitlines()
    assert "failed: episode.k_shot + episode.query_size = 50 + 15" in rows[2]
    assert "| ok |" in rows[3] and "seed=3" in rows[3]


# Bounding a run ----------------------------------------------------------------------------------
def test_max_steps_and_max_time_are_trainer_settings(tmp_path):
    cfg = make_config([*TINY, "episode.num_tasks=50", "trainer.max_steps=3",
                       "trainer.max_time=00:00:10:00"], tmp_path)
    assert train(cfg)["train_steps"] == 3


def test_a_cpu_time_budget_stops_training_and_a_resumed_run_spends_only_what_is_left(monkeypatch):
    clock = [100.0]  # this process's CPU seconds
    monkeypatch.setattr(cpu_time, "process_time", lambda: clock[0])
    trainer = SimpleNamespace(should_stop=False, strategy=SimpleNamespace(broadcast=lambda x: x))

    def stops_at(limit: cpu_time.CPUTimeLimit, start: float, now: float) -> bool:
        trainer.should_stop, clock[0] = False, start
        limit.on_train_start(trainer, None)
        clock[0] = now
        limit.on_train_batch_end(trainer)
        return trainer.should_stop

    limit = cpu_time.CPUTimeLimit(minutes=1)
    assert not stops_at(limit, 100.0, 159.0) and stops_at(limit, 100.0, 160.0)
    resumed = cpu_time.CPUTimeLimit(minutes=2)
    resumed.load_state_dict(limit.state_dict())  # 60 s spent before the checkpoint
    assert not stops_at(resumed, 500.0, 559.0) and stops_at(resumed, 500.0, 560.0)


def test_a_run_under_a_cpu_time_budget_stops_early_and_checkpoints_the_time_spent(tmp_path):
    cfg = make_config([*TINY, "episode.num_tasks=100000", "trainer.max_steps=2000",
                       "callbacks=cpu_time_limit", "callbacks.cpu_time_limit.minutes=0.02"],
                      tmp_path)
    steps = train(cfg)["train_steps"]
    assert 0 < steps < 2000
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(value for key, value in checkpoint["callbacks"].items()
                 if key.startswith("CPUTimeLimit"))
    assert state["used_s"] >= 1.2


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path):
    cfg = make_config([*TINY, "num_epochs=6", "algorithm.outer_lr=1e-12",
                       "callbacks=early_stopping", "callbacks.early_stopping.patience=1"],
                      tmp_path)
    record = train(cfg)
    # an outer step this small never changes the meta-val score: the second validation shows no
    # improvement on the first, and patience 1 stops the run there
    assert record["train_steps"] == 2 * 6
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(value for key, value in checkpoint["callbacks"].items()
                 if key.startswith("EarlyStopping"))
    assert state["wait_count"] == 1 and state["patience"] == 1  # resumable


def test_compose_finds_the_moved_meta_batch_key(capsys):
    cfg = compose_config(["algorithm=maml", "algorithm.meta_batch_size=3"], ".")
    assert cfg.episode.meta_batch_size == 3 and "meta_batch_size" not in cfg.algorithm
    assert "warning: algorithm.meta_batch_size is now episode.meta_batch_size" in (
        capsys.readouterr().err)
