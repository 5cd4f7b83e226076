"""Loggers (CSV, TensorBoard, W&B offline), the run's report (plots, results.md, config tree),
the tasks/s progress bar and the debug presets."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from metalearn import MetaLearner, TaskSampler
from metalearn.evaluation.plots import MetricHistory, csv_rows, logged_rows
from metalearn.run import loggers, progress
from metalearn.run.training import train
from tests.conftest import make_config

TINY = ["dataset.split=lake", "dataset.rotations=false", "episode.num_tasks=8", "num_epochs=1",
        "episode.val_episodes=4", "episode.test_episodes=8", "backbone.hidden_channels=8"]


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of an offline run's .wandb file: wandb's protobuf Records in LevelDB's log
    framing (a 7-byte file header, then 32 KiB blocks of chunks with 7-byte headers: crc32,
    length, type 1 full / 2 first / 3 middle / 4 last). wandb ships no Python reader."""
    block, header = 32768, 7
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, position = [], b"", header
    while position + header <= len(data):
        if block - position % block < header:  # too little room left: the block is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + header])
        if position + header + length > len(data):  # still being written
            break
        pending += data[position + header:position + header + length]
        position += header + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def offline_runs(save_dir: Path, timeout: float = 30) -> list[list[wandb_internal_pb2.Record]]:
    """The records of each offline run under save_dir, in the order they started, once each ends
    with its exit record: `finish()` returns once wandb's service has the whole run, and the
    service writes it out on its own (seen: up to 0.1 s later)."""
    deadline = time.time() + timeout
    runs = []
    for wandb_file in sorted(save_dir.glob("wandb/offline-run-*/run-*.wandb")):
        while True:
            records = wandb_records(wandb_file)
            if any(r.WhichOneof("record_type") == "exit" for r in records) or (
                    time.time() > deadline):
                break
            time.sleep(0.1)
        runs.append(records)
    return runs


def updates(records, kind: str) -> dict[str, object]:
    """The key -> value updates of every config or summary record, later ones winning."""
    items = [item for record in records if record.WhichOneof("record_type") == kind
             for item in getattr(record, kind).update]
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


# The offline decision ---------------------------------------------------------------------------
@pytest.mark.parametrize("environ, offline", [
    ({}, True),
    ({"WANDB_API_KEY": "k" * 40}, False),
    ({"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, True),
    ({"WANDB_MODE": "online"}, False),
    ({"WANDB_MODE": "disabled"}, False),  # wandb itself reads WANDB_MODE then
])
def test_wandb_offline_from_environment(environ, offline, tmp_path):
    assert loggers.wandb_offline({"HOME": str(tmp_path), **environ}) is offline


def test_wandb_offline_from_netrc(tmp_path):
    environ = {"HOME": str(tmp_path)}
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine example.com login user password secret\n")
    assert loggers.wandb_offline(environ)
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert not loggers.wandb_offline(environ)
    assert loggers.wandb_offline({**environ, "WANDB_BASE_URL": "https://wandb.example.com"})
    other = tmp_path / "other_netrc"  # $NETRC replaces ~/.netrc, as for wandb
    other.write_text("machine wandb.example.com login user password secret\n")
    assert not loggers.wandb_offline({**environ, "NETRC": str(other),
                                      "WANDB_BASE_URL": "https://wandb.example.com"})
    netrc.write_text("machine api.wandb.ai login user\n")  # no key: wandb would prompt
    assert loggers.wandb_offline(environ)
    netrc.write_text("machine api.wandb.ai login user password")  # no key: wandb would prompt
    assert loggers.wandb_offline(environ)


def set_hydra_mode(mode: RunMode) -> None:
    """Makes HydraConfig describe a job of a Hydra run or multirun, as train.py's would."""
    hydra = OmegaConf.structured(HydraConf)
    hydra.mode, hydra.sweep.dir = mode, "outputs/multiruns/2024-01-02_03-04-05"
    HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra}))


def test_multirun_jobs_share_the_sweep_directory_as_group():
    previous = HydraConfig.instance().cfg
    try:
        HydraConfig.instance().cfg = None
        assert loggers.multirun_group() is None  # not run by Hydra (the Python API, tests)
        set_hydra_mode(RunMode.RUN)
        assert loggers.multirun_group() is None
        set_hydra_mode(RunMode.MULTIRUN)
        assert loggers.multirun_group() == "2024-01-02_03-04-05"
    finally:
        HydraConfig.instance().cfg = previous


# The progress bar -------------------------------------------------------------------------------
def test_progress_bar_reports_tasks_per_second(monkeypatch):
    # training starts at 0 s, the epoch at 10 s, then three batches of 4 tasks end at 11, 13, 14 s
    clock = iter([0.0, 10.0, 11.0, 13.0, 14.0])
    rates = []

    class RecordRate(Callback):
        def on_train_batch_end(self, trainer, *args):
            rates.append(bar.get_metrics(trainer, trainer.lightning_module)["tasks/s"])

    monkeypatch.setattr(progress, "perf_counter", lambda: next(clock))
    bar = progress.TasksPerSecondProgressBar(tasks_per_batch=4)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[bar, RecordRate()])
    trainer.fit(BoringModel())
    assert rates == ["4.0", "2.7", "3.0"]  # 4*1/1, 4*2/3, 4*3/4 tasks per second
    assert "tasks/s=3.0" in bar.train_progress_bar.postfix


# The learning curves' data ------------------------------------------------------------------------
class LoggingModel(BoringModel):
    def training_step(self, batch, batch_idx):
        output = super().training_step(batch, batch_idx)
        self.log("train/loss", output["loss"])
        return output

    def validation_step(self, batch, batch_idx):
        self.log_dict({"val/acc": 0.5 + self.current_epoch / 10, "val/acc_ci95": 0.1})


def test_metric_history_collects_training_and_validation_metrics_by_step():
    history = MetricHistory()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[history])
    trainer.fit(LoggingModel())
    assert [row["step"] for row in history.rows if "train/loss" in row] == [1, 2, 3, 4, 5, 6]
    # one row per validation, the sanity check excluded
    assert [(row["step"], row["val/acc"]) for row in history.rows if "val/acc" in row] == [
        (3, 0.5), (6, pytest.approx(0.6))]
    assert logged_rows(trainer) == history.rows  # no CSV logger: the history


def test_learning_curves_come_from_metrics_csv_when_it_was_written(tmp_path):
    history = MetricHistory()
    history.rows = [{"step": 1, "train/loss": 2.0}]
    csv_logger = CSVLogger(tmp_path, name="csv", version="")
    trainer = SimpleNamespace(loggers=[csv_logger], callbacks=[history])
    assert logged_rows(trainer) == history.rows  # metrics.csv not written yet
    csv_logger.log_metrics({"train/loss": 1.5}, step=4)
    csv_logger.save()
    assert logged_rows(trainer) == [{"step": 4, "train/loss": 1.5}]


# Runs -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_wandb_runs_offline_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    run_dir = tmp_path / "run"
    started = time.time()
    record = train(make_config(["logger=wandb", *TINY], run_dir))
    assert time.time() - started < 60  # no login prompt, no network wait

    (records,) = offline_runs(run_dir)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "metalearn" and run.display_name == f"{tmp_path.name}/run"
    assert run.run_group == ""  # not a multirun
    config = updates(records, "config")
    assert config["algorithm"]["_target_"] == "metalearn.algorithms.protonet.ProtoNet"
    assert config["episode"]["num_tasks"] == 8
    summary = updates(records, "summary")
    assert summary["test_acc"] == pytest.approx(record["test_acc"])
    assert summary["train_steps"] == 8
    (image,) = [file.path for r in records if r.WhichOneof("record_type") == "files"
                for file in r.files.files if file.path.startswith("media/images/")]
    assert image.startswith("media/images/plots/learning_curves")  # the plot, as an image
    assert list(run_dir.glob(f"wandb/offline-run-*/files/{image}"))
    history_keys = {"/".join(item.nested_key) or item.key for r in records
                    if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert {"val/acc", "test/acc"} <= history_keys


@pytest.mark.slow
def test_each_api_fit_is_a_w_and_b_run_of_its_own(tmp_path):
    learner = MetaLearner("protonet", overrides=["logger=wandb", *TINY], output_dir=tmp_path)
    sampler = TaskSampler(overrides=TINY[:2])
    learner.fit(sampler, steps=2)
    learner.fit(sampler, steps=2)
    runs = offline_runs(tmp_path)
    assert len(runs) == 2  # the second fit did not log into the first one's run
    for records in runs:
        assert records[-1].WhichOneof("record_type") == "exit"  # finished
        validations = [r for r in records if r.WhichOneof("record_type") == "history" and any(
            "/".join(item.nested_key) == "val/acc" for item in r.history.item)]
        assert len(validations) == 1  # one fit's one epoch


@pytest.mark.slow
def test_many_loggers_and_the_run_report(tmp_path):
    run_dir = tmp_path / "run"
    train(make_config(["logger=many", "trainer.log_every_n_steps=2", *TINY,
                       *hash_recorder(run_dir)], run_dir))
    results = json.loads((run_dir / "results.json").read_text())
    # normal training meets a fresh meta-batch every step (unlike debug=overfit, below)
    assert len(set((run_dir / "batch_hashes.txt").read_text().split())) == 8

    rows = csv_rows(run_dir / "csv" / "metrics.csv")
    assert [row["step"] for row in rows if "train/loss" in row] == [1, 3, 5, 7]
    assert [row["test/acc"] for row in rows if "test/acc" in row] == [
        pytest.approx(results["test_acc"])]
    hparams = (run_dir / "csv" / "hparams.yaml").read_text()
    assert "_target_: metalearn.algorithms.protonet.ProtoNet" in hparams  # the whole config
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "val/acc" in events.Tags()["scalars"]
    assert events.Tags()["images"] == ["plots/learning_curves"]
    (table,) = events.Tensors("results/text_summary")
    # results.md's row of the score: a rounded percentage and its interval
    row = (f"| test_acc | {100 * results['test_acc']:.2f}% \u00b1 "
           f"{100 * results['test_acc_ci95']:.2f}% |")
    assert row in table.tensor_proto.string_val[0].decode()
    assert len(list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))) == 1

    assert (run_dir / "plots" / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert row in (run_dir / "results.md").read_text()
    tree = (run_dir / "config_tree.log").read_text()
    assert "_target_: metalearn.algorithms.protonet.ProtoNet" in tree
    groups = [line[4:] for line in tree.splitlines() if line[:4] in ("├── ", "└── ")]
    assert groups[:8] == ["dataset", "episode", "algorithm", "backbone", "trainer", "callbacks",
                          "logger", "paths"]


class RecordBatchHashes(Callback):
    """Writes a hash of every meta-training batch into `path`, one a line."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        parts = (t.numpy().tobytes() for t in batch if t is not None)  # classes may be None
        digest = hashlib.sha1(b"".join(parts)).hexdigest()
        with self.path.open("a") as file:
            file.write(digest + "\n")


def hash_recorder(run_dir: Path) -> list[str]:
    return ["+callbacks.batch_hashes._target_=tests.test_logging.RecordBatchHashes",
            f"+callbacks.batch_hashes.path={run_dir / 'batch_hashes.txt'}"]


@pytest.mark.slow
def test_debug_fdr_runs_one_batch(tmp_path):
    run_dir = tmp_path / "run"
    record = train(make_config(["debug=fdr", *TINY, *hash_recorder(run_dir)], run_dir))
    assert record["train_steps"] == 1
    assert json.loads((run_dir / "results.json").read_text())["train_steps"] == 1
    assert len((run_dir / "batch_hashes.txt").read_text().split()) == 1
    assert not list(run_dir.glob("**/*.ckpt")) and not (run_dir / "csv" / "metrics.csv").exists()
    # without a CSV logger the learning curves come from the collected history
    assert (run_dir / "plots" / "learning_curves.png").is_file()


@pytest.mark.slow
def test_debug_overfit_repeats_one_meta_batch(tmp_path):
    run_dir = tmp_path / "run"
    record = train(make_config(["debug=overfit", *TINY, "num_epochs=20", *hash_recorder(run_dir)],
                               run_dir))
    hashes = (run_dir / "batch_hashes.txt").read_text().split()
    assert record["train_steps"] == 20 and len(hashes) == 20
    assert len(set(hashes)) == 1  # the same meta-batch every epoch
    losses = [row["train/loss"] for row in csv_rows(run_dir / "csv" / "metrics.csv")
              if "train/loss" in row]
    assert len(losses) == 20 and losses[-1] < losses[0] / 3  # and it is being memorised
