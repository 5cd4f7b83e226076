"""The entry points and the Python API set glibc malloc to serve large blocks from its heap (no
mmap per tensor), unless the environment says otherwise; importing metalearn alone does not
(metalearn/run/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# `setup` in a fresh process, then a 64 MiB tensor, then the bytes glibc holds in mmapped blocks
# (mallinfo2, glibc >= 2.33) and the allocator's line
PROBE = """
import ctypes, torch
from metalearn.run.allocator import tune_malloc
{setup}
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tensor = torch.empty(16 * 2**20)
print(libc.mallinfo2().hblkhd, settings)
"""
ENTRY_POINT = "settings = tune_malloc()"  # what every entry point does first (run_cli)
LARGE = 64 * 2**20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def mmapped_bytes(setup: str = ENTRY_POINT, **environment: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "METALEARN_SYS"))}
    result = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)],
                            env={**env, **environment}, capture_output=True, text=True, check=True)
    size, settings = result.stdout.strip().split(" ", 1)
    return int(size), settings


def test_the_entry_points_keep_large_tensors_off_mmap():
    size, settings = mmapped_bytes()
    assert size < LARGE and "kept for reuse" in settings


@pytest.mark.parametrize("environment", [{"METALEARN_SYSTEM_MALLOC": "1"},
                                         {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_the_environment_can_keep_the_system_settings(environment):
    size, settings = mmapped_bytes(**environment)
    assert size >= LARGE and "left at" in settings


def test_importing_metalearn_leaves_malloc_alone():
    size, _ = mmapped_bytes("import metalearn\nsettings = 'untouched'")
    assert size >= LARGE


def test_building_a_meta_learner_tunes_malloc():
    size, settings = mmapped_bytes("from metalearn import MetaLearner\n"
                                   "MetaLearner('maml', dataset='sinusoid')\n"
                                   "settings = tune_malloc()")
    assert size < LARGE and "kept for reuse" in settings
