"""Where one mlet_jax train step spends its time: XLA thunks from a ``jax.profiler`` trace, summed per op.

Builds a model exactly as ``benchmarks.bench_vs_deepctr`` does (Adagrad lr 0.02, summed loss, DeepCTR-Torch's
embedding init for single-layer, the paper's for MLET), on the peer bench's ``.npz`` files (``--data PREFIX`` or
``$MLET_PEER_DATA``; tiny generated ones with ``--smoke``), runs ``--steps`` donated train steps under
``jax.profiler.trace`` and prints the per-step milliseconds of the heaviest XLA ops with the op's HLO (``--hlo``
prints the fused computation of each), then the compiled step's FLOPs. Use it before optimizing a model's step;
BENCHMARKS.md quotes its tables.

Command (BENCHMARKS.md)::

    MLET_PEER_DATA=/tmp/peer_bench/data/criteo_like .venv/bin/python -m benchmarks.profile_step --model autoint \\
        --kind single --batch 1024
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import tempfile

import jax
import numpy as np

from benchmarks.bench_vs_deepctr import write_tiny_arrays
from benchmarks.common import PEER_DATA_ENV, add_external_path, describe, machine, require_path, step_gflop, timed
from mlet_jax.data import load_dataset
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models import MODELS, build_model
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer


def aggregate(trace_dir: str, steps: int) -> list[tuple[str, float, int]]:
    """``[(op name, ms per step, calls per step)]`` of every complete event in the trace, heaviest first."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    with gzip.open(files[0]) as f:
        events = json.load(f)["traceEvents"]
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            total[e["name"]] += e["dur"]
            calls[e["name"]] += 1
    return [(k, v / 1e3 / steps, calls[k] // steps) for k, v in total.most_common()]


def _op_lines(hlo: str) -> dict[str, str]:
    """HLO instruction name -> its line, for the top-level ops the trace names."""
    out = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", line)
        if m:
            out.setdefault(m.group(1), line.strip())
    return out


def main(argv=None) -> list[tuple[str, float, int]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_external_path(ap, "--data", PEER_DATA_ENV, "PREFIX of the peer bench's PREFIX_{train,test}.npz")
    ap.add_argument("--model", default="autoint", type=str.lower, choices=sorted(MODELS))
    ap.add_argument("--kind", choices=("single", "mlet"), default="single")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--inner-dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--hlo", action="store_true", help="print each top op's HLO instruction")
    ap.add_argument("--smoke", action="store_true", help="tiny generated arrays (tests)")
    args = ap.parse_args(argv)
    if not args.smoke:
        require_path(ap, args.data, "--data", PEER_DATA_ENV, files=("_train.npz", "_test.npz"))

    work = tempfile.mkdtemp(prefix="mlet_profile_")
    try:
        data = write_tiny_arrays(os.path.join(work, "tiny")) if args.smoke else args.data
        ds = load_dataset("arrays", data)
        if args.kind == "single":
            spec = EmbeddingSpec(kind="single", dim=args.dim, table_init="normal", table_std=1e-4)
        else:
            spec = EmbeddingSpec(kind="mlet", dim=args.dim, inner_dim=args.inner_dim, table_init="uniform",
                                 projection_std=0.5)
        trainer = Trainer(build_model(args.model, ds.schema, spec),
                          TrainConfig(optimizer=OptimizerSpec("adagrad", 0.02), loss_reduction="sum"))
        b = args.batch
        batches = [{k: np.asarray(getattr(ds.train, k)[i * b:(i + 1) * b]) for k in ("dense", "ids", "label")}
                   for i in range(2)]
        state = trainer.init(0, batches[0])
        step = trainer.train_step
        compiled = step.lower(state, batches[0]).compile()
        gflop = step_gflop(trainer, state, batches[0])  # the one-pass twin's: a chunked step's scan counts once

        def run_steps(state, n):
            for i in range(n):
                state, m = step(state, batches[i % 2])
            return state

        state, _ = timed(run_steps, state, 3)  # compile and warm up
        state, wall = timed(run_steps, state, args.steps)
        wall /= args.steps
        trace = os.path.join(work, "trace")
        with jax.profiler.trace(trace):
            state, _ = timed(run_steps, state, args.steps)
        rows = aggregate(trace, args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ops = _op_lines(compiled.as_text())
    print(f"machine: {describe(machine())}")
    print(f"{args.model} {args.kind} batch {b}: {wall * 1e3:.1f} ms/step unprofiled "
          f"({b / wall:,.0f} samples/s), {gflop:.2f} GFLOP/step")
    skip = ("ThunkExecutor", "block_until_ready", "$", "PjitFunction", "XlaModule", "Thunk")
    shown = [r for r in rows if not r[0].startswith(skip) and r[0] not in ("trace",)][: args.top]
    for name, ms, n in shown:
        print(f"{ms:8.2f} ms {n:3d}x  {name}")
        if args.hlo and name in ops:
            print(f"             {ops[name][:300]}")
    return shown


if __name__ == "__main__":
    main()
