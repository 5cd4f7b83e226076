"""glibc malloc settings that suit PyTorch on the CPU: `tune_malloc`, called where every entry
point's job starts (train.py, eval.py, compare.py, meta_learning.py: `metalearn.cli.run_cli`),
before it builds anything, and by the Python API when it builds its first MetaLearner;
`import metalearn` alone leaves malloc as it was.

By default glibc serves every allocation above a threshold (at most 32 MiB) with its own mmap and
unmaps it when freed, and gives freed heap memory back to the system. A training step allocates
and frees the same large activation buffers every time, so every step pays page faults to map
and zero them again: on this project's CPU machine an elementwise op on a 128 MB tensor ran 9x
slower than on reused memory, Conv4's first layer ran at 4.9 GFLOP/s against 29.1, and ProtoNet
20-way 5-shot steps took 1.8x as long as with the settings below (experiments/results/bench.md). The settings are those of
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>: large blocks come from the heap, and freed
memory stays with the process for the next step (so its resident memory stays at its peak).

Left alone: where the environment sets either MALLOC_ variable itself, sets
METALEARN_SYSTEM_MALLOC=1, or the C library is not glibc (another allocator preloaded ignores
glibc's settings, so they do no harm there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_FREED_BYTES = 2**31 - 1  # mallopt takes an int: give memory back above 2 GiB free only


@functools.cache  # settings of the process: applied once, the line kept for the logs
def tune_malloc() -> str:
    """Applies the settings when they apply; returns the line that says what was done."""
    if os.environ.get("METALEARN_SYSTEM_MALLOC", "0") not in ("", "0"):
        return "malloc: left at the system's settings (METALEARN_SYSTEM_MALLOC)"
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return "malloc: left at the environment's MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_"
    if not sys.platform.startswith("linux"):
        return f"malloc: left at the system's settings (not glibc on {sys.platform})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
    except (OSError, AttributeError):
        return "malloc: left at the system's settings (the C library is not glibc)"
    if libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES):
        return ("malloc: large blocks from the heap and freed memory kept for reuse "
                "(as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647; "
                "METALEARN_SYSTEM_MALLOC=1 turns this off)")
    return "malloc: glibc refused the settings; left as it was"
