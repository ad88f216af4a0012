"""Process settings for fast CPU steps: glibc malloc's thresholds (:func:`tune_malloc`).

XLA's CPU runtime takes each step's temporary buffers from ``malloc``. glibc serves a request above its mmap
threshold (at most 32 MiB by its own dynamic rule) with a fresh ``mmap`` and returns freed memory at the top of a
heap to the kernel past its trim threshold (128 KiB), so a step whose temporaries exceed that (DLRM at batch 4096:
~40 MiB) touches fresh pages every step: ~10,000 page faults and ~14 ms of a ~120 ms step on the 2-core benchmark
box, the gap that kept batch 4096 slower per sample than batch 1024 (BENCHMARKS.md, "Allocator"). Raising both
thresholds keeps freed buffers in the process for the next step.

The cost: memory a step frees (in blocks under 1 GiB) stays in the process for reuse instead of going back to the
kernel, so the resident size stays at its high-water mark. Blocks of 1 GiB and more (full-size tables) are still
mapped and unmapped on their own.

The command-line entry points (``python -m mlet_jax.train``, ``mlet_jax.demo``, the benchmarks) call
:func:`tune_malloc` first; from Python call it yourself, once, before training. ``MLET_MALLOC_TUNING=0`` in the
environment turns it off everywhere.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 1 << 30  # bytes: requests below this come from the heap, whose freed memory is reused
TRIM_THRESHOLD = 2**31 - 1  # bytes (a C int): free memory at a heap's top before it is returned to the kernel
OPT_OUT = "MLET_MALLOC_TUNING"  # "0": leave the allocator alone
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)

_state: dict[str, bool] = {}


def tune_malloc() -> bool:
    """Raise glibc malloc's mmap and trim thresholds for this process; ``True`` if they are now set.

    Does nothing (``False``) off Linux/glibc, or when ``$MLET_MALLOC_TUNING`` is ``0``. Idempotent.
    """
    if os.environ.get(OPT_OUT, "1").strip() == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "done" not in _state:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        _state["done"] = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _state["done"]


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` has set the thresholds in this process (benchmarks record it)."""
    return _state.get("done", False)
