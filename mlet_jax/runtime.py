"""Process settings for fast CPU steps: glibc malloc's tunables (:func:`reexec_with_tuned_malloc`).

XLA's CPU runtime takes each step's temporary buffers from ``malloc``. glibc serves a request above its mmap
threshold (at most 32 MiB by its own dynamic rule) with a fresh ``mmap``, and gives an emptied heap back to the
kernel, so a step whose temporaries exceed that (DLRM at batch 4096: 45 MiB single-layer, 71 MiB MLET k = 64)
touches fresh pages every step: 10,000-12,000 page faults and ~10% of the step on the 2-core benchmark box, the gap
that kept batch 4096 slower per sample than batch 1024 (BENCHMARKS.md, "Allocator"). :data:`TUNABLES` does two
things:

- raises the mmap and trim thresholds, so that freed buffers stay in the heap for the next step;
- ``hugetlb=1``: glibc asks the kernel for 2 MiB transparent huge pages (``madvise``) for what it maps. This is for
  requests a thread's heap cannot hold: glibc's per-thread heaps are at most 64 MiB each (a build constant), so a
  larger block (MLET's 71 MiB) is mapped afresh whatever the threshold, and huge pages make that 512x fewer
  faults. (``arena_max=1``, one heap for all threads, removes those maps too but made the single-layer steps ~7%
  slower: measured.)

glibc reads them from ``$GLIBC_TUNABLES`` once, when the process starts (``mallopt`` later in the process does not
reach the heaps XLA's threads already use: measured, the faults stay), so the command-line entry points
(``python -m mlet_jax.train``, ``mlet_jax.demo``, the benchmarks) re-run themselves once with it set. From Python,
start the interpreter with ``GLIBC_TUNABLES=`` :data:`TUNABLES`. ``MLET_MALLOC_TUNING=0`` turns the re-run off, and a
``GLIBC_TUNABLES`` that already sets a threshold or ``hugetlb`` is left as the user wrote it. Older glibc (before
2.35) ignores ``hugetlb``; a kernel with transparent huge pages off (``never``) ignores the advice.

The cost: memory freed in blocks under 1 GiB stays in the process for reuse instead of going back to the kernel, so
the resident size stays near its high-water mark, and huge pages round mapped blocks up to 2 MiB. Blocks of 1 GiB
and more (full-size tables) are still mapped and unmapped on their own.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = ("glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"  # 1 GiB, 4 GiB
            ":glibc.malloc.hugetlb=1")  # transparent huge pages for what is still mapped
OPT_OUT = "MLET_MALLOC_TUNING"  # "0": leave the allocator alone
_RERUN = "MLET_MALLOC_RERUN"  # set in the re-run process, so that it never re-runs twice


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def malloc_tuned() -> bool:
    """Whether this process started with :data:`TUNABLES` in ``$GLIBC_TUNABLES`` (benchmarks record it)."""
    have = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return _glibc() and all(t in have for t in TUNABLES.split(":"))


def reexec_with_tuned_malloc() -> bool:
    """Re-run this command (same interpreter, options and arguments) with :data:`TUNABLES` added to
    ``$GLIBC_TUNABLES``, unless it already has them; ``True`` if this process runs with them.

    For command-line entry points only: it replaces the process, so call it first in ``if __name__ ==
    "__main__":``, before any output or work. Returns ``False`` without re-running off Linux/glibc, with
    ``$MLET_MALLOC_TUNING`` = ``0``, when ``$GLIBC_TUNABLES`` already sets one of ours its own way, or when
    this process is itself the re-run (the tunables did not take: go on untuned).
    """
    if malloc_tuned():
        return True
    if os.environ.get(OPT_OUT, "1").strip() == "0" or not _glibc() or os.environ.get(_RERUN):
        return False
    have = os.environ.get("GLIBC_TUNABLES", "")
    if any(t.split("=")[0] in have for t in TUNABLES.split(":")):
        return False
    env = {**os.environ, "GLIBC_TUNABLES": f"{have}:{TUNABLES}" if have else TUNABLES, _RERUN: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    return True  # not reached


def untuned_env() -> dict[str, str]:
    """``os.environ`` without what :func:`reexec_with_tuned_malloc` added (:data:`TUNABLES` and the re-run mark):
    the environment for a child process that should run as it would have without us (a peer library's benchmark).
    """
    env = dict(os.environ)
    env.pop(_RERUN, None)
    ours = set(TUNABLES.split(":"))
    rest = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and t not in ours]
    if rest:
        env["GLIBC_TUNABLES"] = ":".join(rest)
    else:
        env.pop("GLIBC_TUNABLES", None)
    return env
