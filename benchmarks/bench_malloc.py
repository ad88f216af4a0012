"""DLRM train steps under glibc malloc settings (:mod:`mlet_jax.runtime`): ms and page faults per step.

Settings (``--settings``): ``untuned`` (glibc's defaults), ``thresholds`` (the mmap and trim thresholds raised),
``arena1`` (the thresholds and ``arena_max=1``: every thread allocates from the main heap, which grows without the
64 MiB limit of glibc's per-thread heaps), ``thp`` (the thresholds and ``hugetlb=1``: what glibc still maps afresh,
it asks the kernel to back with 2 MiB transparent huge pages, 512x fewer faults; this is ``runtime.TUNABLES``).
Each setting runs in a fresh process (the allocator's settings are read when a process starts), settings
alternating for ``--rounds`` rounds, on bench_torchrec's shapes and Zipf ids (26 peer-bench tables, d 16, bottom
512-256-128-16, top 512-256-1, SGD 0.2, the library's default chunking). A step's minor page faults come from
``getrusage``: a buffer glibc maps afresh faults once per 4 KiB page it touches (once per 2 MiB with huge pages).

    .venv/bin/python -m benchmarks.bench_malloc --rounds 3 --out results/malloc.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import machine, write_jsonl
from mlet_jax.runtime import reexec_with_tuned_malloc

THRESHOLDS = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
SETTINGS = {"untuned": "", "thresholds": THRESHOLDS, "arena1": THRESHOLDS + ":glibc.malloc.arena_max=1",
            "thp": THRESHOLDS + ":glibc.malloc.hugetlb=1"}


def child(kind: str, batches: list[int], steps: int, repeats: int, toy: bool = False,
          setting: str | None = None) -> list[dict]:
    """In this process: compile the DLRM step per batch size, time ``repeats`` x ``steps`` steps, count faults."""
    import resource
    import statistics
    import time

    import jax

    from benchmarks import bench_torchrec as bt
    from mlet_jax.runtime import malloc_tuned

    tuned = malloc_tuned()
    out = []
    for b in batches:
        vocab = bt.TOY_VOCAB if toy else bt.VOCAB
        arr = bt.zipf_batches(vocab, b, 4, 16, 0)
        staged = [jax.device_put({"dense": arr[f"dense_{b}"][i], "ids": arr[f"ids_{b}"][i],
                                  "label": arr[f"label_{b}"][i]}) for i in range(4)]
        trainer = bt.dlrm_trainer(vocab, kind, 16, 64, toy, None)
        state = trainer.init(0, staged[0])
        step = trainer.train_step.lower(state, staged[0]).compile()
        for i in range(3):  # warm: the allocator's dynamic threshold settles too
            state, _ = step(state, staged[i % 4])
        jax.block_until_ready(state)
        n = max(1, steps * 1024 // b)  # about the same samples per timed segment at every batch size
        times, f0 = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(n):
                state, _ = step(state, staged[i % 4])
            jax.block_until_ready(state)
            times.append((time.perf_counter() - t0) / n)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / (repeats * n)
        med = statistics.median(times)
        out.append({"kind": kind, "batch": b, "setting": setting, "malloc_tuned": tuned, "ms_per_step": 1e3 * med,
                    "samples_per_s": b / med, "ms_per_step_min": 1e3 * min(times), "faults_per_step": faults,
                    "faulted_mib_per_step": faults * 4096 / 2**20})
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["single", "mlet"], choices=["single", "mlet"])
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                   help="malloc settings to alternate (module docstring)")
    p.add_argument("--rounds", type=int, default=2, help="alternation rounds (a fresh process per setting)")
    p.add_argument("--steps", type=int, default=12, help="steps of batch 1024 per timed segment (fewer at larger)")
    p.add_argument("--repeats", type=int, default=5, help="timed segments per process")
    p.add_argument("--out", default=None, help="JSONL output path")
    p.add_argument("--toy", action="store_true", help="tiny vocabularies and MLPs (tests)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--setting", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("rounds", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1")
    if any(b < 1 for b in args.batches):
        p.error("--batches: every batch size must be >= 1")
    if args.child:
        reexec_with_tuned_malloc()  # a no-op under the parent (MLET_MALLOC_TUNING=0); tuned when run by hand
        print(json.dumps(child(args.child, args.batches, args.steps, args.repeats, args.toy, args.setting)))
        return []
    rows = []
    for r in range(args.rounds):
        for kind in args.kinds:
            for setting in args.settings:
                others = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
                          if t and not t.startswith("glibc.malloc.")]  # the user's other tunables are kept
                env = {**os.environ, "MLET_MALLOC_TUNING": "0",  # the child runs exactly this setting
                       "GLIBC_TUNABLES": ":".join(others + [t for t in SETTINGS[setting].split(":") if t])}
                cmd = [sys.executable, "-m", "benchmarks.bench_malloc", "--child", kind, "--setting", setting,
                       "--steps", str(args.steps), "--repeats", str(args.repeats),
                       "--batches", *map(str, args.batches)] + ["--toy"] * args.toy
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if res.returncode:
                    raise SystemExit(f"bench_malloc child ({kind}, {setting}) failed:\n{res.stderr[-3000:]}")
                for row in json.loads(res.stdout.strip().splitlines()[-1]):
                    row.update(round=r, machine=machine())
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "machine"}), flush=True)
    if args.out:
        write_jsonl(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
