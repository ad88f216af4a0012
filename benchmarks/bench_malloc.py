"""DLRM train steps with and without glibc malloc tuning (:mod:`mlet_jax.runtime`): ms and page faults per step.

Each setting runs in a fresh process (the allocator's settings are per process), settings alternating for
``--rounds`` rounds, on bench_torchrec's shapes and Zipf ids (26 peer-bench tables, d 16, bottom 512-256-128-16, top
512-256-1, SGD 0.2, the library's default chunking). A step's minor page faults come from ``getrusage``: a buffer
glibc maps afresh faults once per 4 KiB page it touches, so faults x 4 KiB is the memory the step mapped anew.

    .venv/bin/python -m benchmarks.bench_malloc --rounds 2 --out results/malloc.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import machine, write_jsonl
from mlet_jax.runtime import TUNABLES, reexec_with_tuned_malloc


def child(kind: str, batches: list[int], steps: int, repeats: int, toy: bool = False) -> list[dict]:
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
        out.append({"kind": kind, "batch": b, "malloc_tuned": tuned, "ms_per_step": 1e3 * med,
                    "samples_per_s": b / med, "ms_per_step_min": 1e3 * min(times), "faults_per_step": faults,
                    "faulted_mib_per_step": faults * 4096 / 2**20})
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["single", "mlet"], choices=["single", "mlet"])
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--rounds", type=int, default=2, help="alternation rounds (a fresh process per setting)")
    p.add_argument("--steps", type=int, default=12, help="steps of batch 1024 per timed segment (fewer at larger)")
    p.add_argument("--repeats", type=int, default=5, help="timed segments per process")
    p.add_argument("--out", default=None, help="JSONL output path")
    p.add_argument("--toy", action="store_true", help="tiny vocabularies and MLPs (tests)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("rounds", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1")
    if any(b < 1 for b in args.batches):
        p.error("--batches: every batch size must be >= 1")
    if args.child:
        reexec_with_tuned_malloc()  # the child's first act: it may replace the process
        print(json.dumps(child(args.child, args.batches, args.steps, args.repeats, args.toy)))
        return []
    rows = []
    for r in range(args.rounds):
        for kind in args.kinds:
            for setting in ("0", "1"):
                env = {**os.environ, "MLET_MALLOC_TUNING": setting}
                if setting == "0":  # untuned even when this process runs tuned
                    env["GLIBC_TUNABLES"] = ":".join(t for t in env.get("GLIBC_TUNABLES", "").split(":")
                                                     if t and t not in TUNABLES.split(":"))
                cmd = [sys.executable, "-m", "benchmarks.bench_malloc", "--child", kind, "--steps", str(args.steps),
                       "--repeats", str(args.repeats), "--batches", *map(str, args.batches)] + ["--toy"] * args.toy
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if res.returncode:
                    raise SystemExit(f"bench_malloc child ({kind}, MLET_MALLOC_TUNING={setting}) failed:\n"
                                     f"{res.stderr[-3000:]}")
                for row in json.loads(res.stdout.strip().splitlines()[-1]):
                    row.update(round=r, machine=machine())
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "machine"}), flush=True)
    if args.out:
        write_jsonl(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
