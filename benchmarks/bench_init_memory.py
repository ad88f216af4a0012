"""Peak memory of ``Trainer.init`` against the bytes of the train state it returns, and a few steps at that size.

DLRM with MLET tables (d = 16, k = 64), row-sparse torch Adagrad: the state is the table (n x k), its accumulator
(n x k), the dedup scratch (n int32, tables up to 2^23 rows) and the small dense parameters. Each case runs in a
fresh subprocess, so ``ru_maxrss`` is that case's own peak; the JAX runtime's resident memory before ``init``
(measured after a tiny warm-up model) is subtracted.

Commands (the BENCHMARKS.md numbers)::

    .venv/bin/python -m benchmarks.bench_init_memory --vocab scaled     # 4.5M rows: ~2.2 GiB state, ~1 min
    .venv/bin/python -m benchmarks.bench_init_memory --vocab criteo --steps 10 --batch 2048
                                                                          # 33.8M rows: ~17 GB state, ~2 min
    .venv/bin/python -m benchmarks.bench_init_memory --vocab scaled --devices 8   # the same on an 8-device mesh

``--vocab criteo`` uses the 26 Criteo-Kaggle DLRM table sizes (33,762,577 rows); ``scaled`` the same sizes scaled to
4.5M rows. The acceptance bar (issue 13): init peak <= 1.3x the state's bytes, and the Criteo-size run must fit a
24 GB machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from benchmarks.common import machine, timed
from mlet_jax.distributed import make_mesh
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer

CRITEO_KAGGLE = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)


def _vocab(name: str) -> tuple[int, ...]:
    if name == "criteo":
        return CRITEO_KAGGLE
    scale = 4.5e6 / sum(CRITEO_KAGGLE)
    return tuple(max(2, int(round(v * scale))) for v in CRITEO_KAGGLE)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _case(vocab_name: str, steps: int, batch: int, devices: int) -> dict:
    vocab = _vocab(vocab_name)
    config = TrainConfig(OptimizerSpec("adagrad", lr=0.02))

    def model(v):
        return DLRM(vocab_sizes=v, num_dense=13, embedding=EmbeddingSpec("mlet", 16, 64))

    rng = np.random.default_rng(0)
    # Zipf-like ids (rank ~ u^-2 within each field), as the paper-scale data would have
    ids = np.stack([np.minimum((rng.pareto(1.0, batch) * 3).astype(np.int64), v - 1) for v in vocab], 1)
    b = {"dense": rng.standard_normal((batch, 13)).astype(np.float32), "ids": ids.astype(np.int32),
         "label": (rng.random(batch) < 0.25).astype(np.float32)}
    # warm up the runtime (and the allocator) on a tiny model so the baseline is the runtime, not the state
    small = tuple(min(v, 10) for v in vocab)
    wb = {**b, "ids": np.minimum(b["ids"], np.asarray(small) - 1).astype(np.int32)}  # ids inside the tiny tables
    warm = Trainer(model(small), config)
    timed(warm.train_step, warm.init(0, wb), wb)
    base_rss = _rss_mib()
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tr = Trainer(model(vocab), config, mesh=make_mesh() if devices > 1 else None)
    if devices > 1:
        b = tr.place_batch(b)
    state, init_s = timed(tr.init, 0, b)
    init_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state.replace(rng=jax.random.key_data(state.rng))))
    step_s, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = tr.train_step(state, b)
        losses.append(float(m["loss"]))
        step_s.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state_mib = state_bytes / 2**20
    return {"vocab": vocab_name, "rows": int(sum(vocab)), "batch": batch, "devices": jax.device_count(),
            "state_mib": state_mib,
            "runtime_rss_mib": base_rss, "runtime_peak_mib": base_peak, "init_peak_rss_mib": init_peak,
            "init_peak_over_state": (init_peak - base_rss) / state_mib, "init_s": init_s,
            "steps": steps, "peak_rss_after_steps_mib": peak, "step_s": step_s, "losses": losses,
            "dedup": "scatter" if state.dedup is not None else "sort"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", choices=["scaled", "criteo"], default="scaled")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--devices", type=int, default=1,
                   help="simulated CPU devices: > 1 initializes and trains on a mesh over all of them")
    p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print("RESULT" + json.dumps(_case(args.vocab, args.steps, args.batch, args.devices)))
        return
    cmd = [sys.executable, "-m", "benchmarks.bench_init_memory", "--case", "--vocab", args.vocab,
           "--steps", str(args.steps), "--batch", str(args.batch), "--devices", str(args.devices)]
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices}"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode:
        sys.exit(out.stderr[-4000:])
    rec = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))[6:])
    rec["machine"] = machine()
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
