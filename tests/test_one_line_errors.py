"""Every configuration mistake is one line and exit status 2, reported before torch and Lightning
load where it can be: the mistakes Hydra itself finds (an unknown name or key), keys that a `+`
adds where they are no setting, values no run can use, data a backbone cannot take, a disk that
refuses a write and a run directory that cannot be made."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metalearn.cli import check_command_line, check_creatable
from metalearn.errors import UserError, WriteError
from metalearn.files import atomic_write
from metalearn.run.build import build
from metalearn.run.checkpoints import CONFIG_KEY
from metalearn.run.config_check import validate
from metalearn.run.stored_runs import stored_run
from tests.conftest import ROOT, make_config


def command_line_error(config_name: str, *argv: str) -> str:
    """The one-line error of `python <config_name>.py <argv>`, checked in this process."""
    with pytest.raises(UserError) as caught:
        check_command_line(config_name, list(argv))
    return str(caught.value)


# Hydra's own mistakes, for each entry point -------------------------------------------------------
@pytest.mark.parametrize("config_name,argv,message", [
    ("train", ["algorithm=foo"], "unknown algorithm 'foo'; choose one of: anil, baseline, "),
    ("train", ["dataset=foo"], "unknown dataset 'foo'; choose one of: cifar_fs, cub, fc100, "),
    ("train", ["experiment=nope"], "unknown experiment 'nope'; choose one of: anil_omniglot, "),
    ("train", ["logger=foo"], "unknown logger 'foo'; choose one of: csv, many, tensorboard, wandb"),
    ("train", ["-m", "algorithm=protonet,foo"], "unknown algorithm 'foo'; choose one of: "),
    ("train", ["episode.nway=5"], "episode.nway is not a setting of "
     "metalearn.data.datamodule.EpisodicDataModule; did you mean episode.n_way?"),
    ("train", ["episod.n_way=5"], "episod is not a setting; did you mean episode?"),
    ("train", ["trainer.limit_train_batches=2"], "trainer.limit_train_batches is a setting of "
     "lightning.Trainer that the config leaves out: add it with +trainer.limit_train_batches="),
    ("eval", ["episode.nway=5"], "episode.nway is not a setting of "
     "metalearn.data.datamodule.EpisodicDataModule; did you mean episode.n_way?"),
    ("eval", ["dataset=foo"], "unknown dataset 'foo'; choose one of: cifar_fs, "),
    ("compare", ["logger=foo"], "unknown logger 'foo'; choose one of: csv, many, "),
    ("compare", ["-m", "experiment=nope"], "unknown experiment 'nope'; choose one of: "),
])
def test_what_hydra_refuses_is_one_line_naming_the_choices_or_the_nearest_key(config_name, argv,
                                                                               message):
    assert command_line_error(config_name, *argv).startswith(message)


# Keys a `+` adds --------------------------------------------------------------------------------
@pytest.mark.parametrize("config_name,argv,message", [
    ("train", ["+foo=1"], "foo is not a setting; its settings are: ckpt_path, eval_frequency, "
     "monitor, monitor_mode, num_epochs, optimized_metric, overwrite, save_frequency, seed, "
     "test_ckpt"),
    ("train", ["+num_epoch=1"], "num_epoch is not a setting; did you mean num_epochs?"),
    ("train", ["+trainer.limit_train_batche=2"], "trainer.limit_train_batche is not a setting "
     "of lightning.Trainer; did you mean trainer.limit_train_batches?"),
    ("train", ["algorithm=maml", "+algorithm.optimizer.weight_decy=0.1"],
     "algorithm.optimizer.weight_decy is not a setting of torch.optim.Adam; did you mean "
     "algorithm.optimizer.weight_decay?"),
    ("eval", ["+eval.shotz=[1]"], "eval.shotz is not a setting of eval; did you mean eval.shots?"),
])
def test_a_key_added_where_it_is_no_setting_is_refused(config_name, argv, message):
    assert command_line_error(config_name, *argv) == message


def test_keys_added_as_settings_of_their_component_are_accepted(tmp_path):
    run_dir = f"hydra.run.dir={tmp_path / 'run'}"
    for argv in (["+trainer.limit_train_batches=2"], ["+dataset/augment=natural"],
                 ["algorithm=maml", "+algorithm.optimizer.weight_decay=0.1"],
                 ["+callbacks.sigterm._target_=tests.helpers.SigtermAtStep",
                  "+callbacks.sigterm.step=3"],
                 ["++seed=3"]):
        check_command_line("train", [*argv, run_dir])
    assert not (tmp_path / "run").exists()  # the check leaves nothing behind


# Values no run can use --------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["algorithm.outer_lr=inf"], "algorithm.outer_lr=inf must be a finite number > 0"),
    (["algorithm=maml", "algorithm.inner_lr=nan"],
     "algorithm.inner_lr=nan must be a finite number > 0"),
    (["algorithm=maml", "+algorithm.optimizer.weight_decay=inf"],
     "algorithm.optimizer.weight_decay=inf must be a finite number"),
    (["algorithm=maml", "dataset=sinusoid", "dataset.amplitude=[0.1,inf]"],
     "dataset.amplitude[1]=inf must be a finite number"),
    (["monitor_mode=min"], "monitor_mode=min would keep the checkpoint of the lowest val/acc, "
     "the worst; use monitor_mode=max (or leave it null)"),
    (["algorithm=maml", "dataset=sinusoid", "monitor_mode=max"], "monitor_mode=max would keep "
     "the checkpoint of the highest val/mse, the worst; use monitor_mode=min (or leave it null)"),
    (["algorithm=siamese", "monitor=val/pair_acc", "monitor_mode=min"], "monitor_mode=min would "
     "keep the checkpoint of the lowest val/pair_acc, the worst; use monitor_mode=max"),
    (["monitor_mode=best"], "monitor_mode='best' must be max or min"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 must be a whole number >= 1, or -1 (no "
     "limit: the epochs decide)"),
    (["trainer.max_steps=-2"], "trainer.max_steps=-2 must be a whole number >= 1, or -1"),
    (["trainer=cpu", "trainer.precision=16-true"], "trainer.precision=16-true computes in "
     "float16, which needs a GPU; on the CPU use bf16-mixed, 32-true or 64-true"),
    (["trainer=cpu", "trainer.precision=16-mixed"], "trainer.precision=16-mixed computes in "
     "float16, which needs a GPU"),
])
def test_values_no_run_can_use_are_one_line(argv, message):
    assert command_line_error("train", *argv).startswith(message)


@pytest.mark.parametrize("algorithm", ["relationnet", "protonet"])
def test_an_algorithm_without_regression_says_so_before_its_backbone_keys(algorithm):
    # Relation Networks set backbone.flatten, which the sinusoid's MLP does not have
    assert command_line_error("train", f"algorithm={algorithm}", "dataset=sinusoid").startswith(
        f"algorithm={algorithm} does not support regression (dataset=sinusoid); it supports: "
        "classification")


# Data a backbone cannot take --------------------------------------------------------------------
def feature_table(path: Path) -> Path:
    """A table of 30 labels with 20 rows of 3 features each."""
    rows = [f"{label},{row},{row * label},{label - row}"
            for label in range(30) for row in range(20)]
    path.write_text("label,a,b,c\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("dataset,size", [("sinusoid", 1), ("features", 3)])
def test_a_convolutional_backbone_on_vectors_names_what_to_use(dataset, size, tmp_path):
    overrides = [f"dataset={dataset}", "backbone=conv4", "algorithm=maml"]
    if dataset == "features":
        overrides.append(f"dataset.path={feature_table(tmp_path / 'table.csv')}")
    with pytest.raises(UserError) as caught:
        build(make_config(overrides, tmp_path))
    assert str(caught.value) == (f"the backbone Conv4 takes images [C, H, W], and "
                                 f"dataset={dataset} gives vectors of size {size}; use "
                                 "backbone=mlp, which takes any shape")


# eval.py's documented test-time override ---------------------------------------------------------
def fake_checkpoint(path: Path, algorithm: str) -> Path:
    """A file holding what eval.py reads first of a checkpoint: its training config."""
    cfg = make_config([f"algorithm={algorithm}"], path.parent)
    torch.save({CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}, path)
    return path


def test_eval_takes_algorithm_test_inner_steps_and_checks_it_on_the_checkpoints_algorithm(
        tmp_path):
    overrides = ["algorithm.test_inner_steps=3"]
    cfg = make_config([f"ckpt_path={tmp_path / 'x.ckpt'}", *overrides], tmp_path, "eval")
    maml = stored_run(str(fake_checkpoint(tmp_path / "maml.ckpt", "maml")), cfg, overrides)
    assert maml.cfg.algorithm.test_inner_steps == 3
    validate(maml.cfg)
    protonet = stored_run(str(fake_checkpoint(tmp_path / "protonet.ckpt", "protonet")), cfg,
                          overrides)
    with pytest.raises(UserError, match=r"^algorithm.test_inner_steps is not a setting of "
                                        r"metalearn.algorithms.protonet.ProtoNet; its settings"):
        validate(protonet.cfg)


# A disk that refuses a write, a run directory that cannot be made --------------------------------
def failing_write(error: BaseException):
    def write(partial: Path) -> None:
        partial.write_bytes(b"half of it")
        raise error
    return write


@pytest.mark.parametrize("error,reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded"),
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
     "torch.save: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
])
def test_a_refused_write_is_one_line_naming_the_file_and_keeps_the_old_one(error, reason,
                                                                           tmp_path):
    path = tmp_path / "results.json"
    path.write_text("the previous results")
    with pytest.raises(WriteError) as caught, atomic_write(path) as partial:
        failing_write(error)(partial)
    assert str(caught.value) == f"cannot write {path} ({reason}); the file as it was is kept"
    assert isinstance(caught.value, OSError)  # as the checkpoint writer words its own message
    assert path.read_text() == "the previous results"
    assert [file.name for file in tmp_path.iterdir()] == ["results.json"]  # no temporary left


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a full disk")
def test_torch_save_to_a_full_disk_is_one_line(tmp_path):
    with pytest.raises(WriteError, match=r"^cannot write .*model.pt \(torch.save: "):
        with atomic_write(tmp_path / "model.pt"):
            torch.save({"weights": torch.zeros(10_000)}, "/dev/full")


def test_a_bug_in_what_writes_keeps_its_own_error(tmp_path):
    for bug in (ValueError("a bug"), OSError(errno.EBADF, "Bad file descriptor"),
                RuntimeError("CUDA out of memory")):
        with pytest.raises(type(bug)) as caught, atomic_write(tmp_path / "out") as partial:
            failing_write(bug)(partial)
        assert caught.value is bug
    assert not list(tmp_path.iterdir())


def test_a_run_directory_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(UserError) as caught:
        check_creatable(tmp_path / "file" / "run", "hydra.run.dir")
    assert str(caught.value) == (f"cannot write into {tmp_path / 'file' / 'run'} "
                                 f"({tmp_path / 'file'} is a file); choose another hydra.run.dir")


# The entry points themselves ---------------------------------------------------------------------
def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("script,args,message", [
    ("train.py", ["algorithm=foo"], "error: unknown algorithm 'foo'; choose one of: anil, "),
    ("eval.py", ["ckpt_path=none.ckpt", "episode.nway=5"], "error: episode.nway is not a setting "
     "of metalearn.data.datamodule.EpisodicDataModule; did you mean episode.n_way?"),
    # the documented override composes: the checkpoint is what is missing
    ("eval.py", ["ckpt_path=none.ckpt", "algorithm.test_inner_steps=3"],
     "error: ckpt_path='none.ckpt': no such file"),
    ("compare.py", ["logger=foo"], "error: unknown logger 'foo'; choose one of: csv, many, "),
    ("train.py", [f"hydra.run.dir={ROOT}/train.py/run"],
     f"error: cannot write into {ROOT}/train.py/run ({ROOT}/train.py is a file); choose another "
     "hydra.run.dir"),
])
def test_an_entry_points_mistake_is_one_line_and_exit_status_2(script, args, message):
    result = run_script(script, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]


# what the package's root exports (the Python API, metalearn/__init__.py) is left out: this checks
# what the entry point itself imports before it reports
WITHOUT_TORCH = """
import runpy, sys, types
package = types.ModuleType("metalearn")
package.__path__ = ["metalearn"]
sys.modules["metalearn"] = package
for heavy in ("torch", "lightning"):
    sys.modules[heavy] = None  # importing it raises ImportError
for argv in (["algorithm=foo"], ["episode.nway=5"], ["episode.k_shot=0"], ["+num_epoch=1"]):
    sys.argv = ["train.py", *argv]
    try:
        runpy.run_path("train.py", run_name="__main__")
    except SystemExit as stop:
        print(stop.code)
"""


def test_config_mistakes_are_reported_before_torch_and_lightning_load():
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.stdout.split() == ["2", "2", "2", "2"], result.stderr[-2000:]
    assert [line.split(";")[0] for line in result.stderr.strip().splitlines()] == [
        "error: unknown algorithm 'foo'",
        "error: episode.nway is not a setting of metalearn.data.datamodule.EpisodicDataModule",
        "error: episode.k_shot=0 must be a whole number >= 1",
        "error: num_epoch is not a setting"]
