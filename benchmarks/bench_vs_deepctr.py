"""mlet_jax versus DeepCTR-Torch: the same models, data, batch size, optimizer and epoch, alternated in one run.

For every (model, batch size) the script runs, back to back, DeepCTR-Torch 0.3.0 (``../shared/peer_bench/
bench_deepctr.py`` in its own venv and process) and mlet_jax with single-layer and MLET (k = 64) embeddings, in this
process, on the ``.npz`` files that ``../shared/peer_bench/gen_data.py`` writes; so noise from other jobs on the
machine hits both. Each run: one epoch, Adagrad lr 0.02 (torch semantics), d = 16, DeepCTR-Torch's embedding init
N(0, 1e-4) for single-layer tables (MLET: the paper's U(+-1/sqrt(n_field)) tables and N(0, 0.5) projections),
loss summed over the batch as DeepCTR-Torch does, test AUC / LogLoss on the test file. Initialization (DeepCTR's
``build_s``, mlet_jax's ``Trainer.init``) is outside every throughput. The three outside paths are options with an
environment default: ``--peer-dir`` (``$MLET_PEER_BENCH``), ``--data`` (``$MLET_PEER_DATA``) and ``--deepctr-python``
(``$MLET_DEEPCTR_PYTHON``); a missing one is a usage error before anything runs.

Regularization: DeepCTR-Torch's defaults add ``1e-5 ||W||^2`` of every embedding table to the loss, which touches all
14.3M table entries every step and has no exact row-sparse equivalent. mlet_jax's row-sparse tables need no L2, so
by default DeepCTR-Torch runs with ``l2_reg_embedding = l2_reg_linear = l2_reg_cross = 0`` (``--deepctr-l2 0``),
which makes the two compute the same function; ``--deepctr-l2 default`` keeps DeepCTR's defaults.

Throughput: ``steady`` excludes the first step (JAX compilation; DeepCTR's input packing): DeepCTR-Torch's
``(n - batch) / (t_last_step - t_first_step)``, mlet_jax's ``fit`` throughput after the first step. ``epoch``
throughput is rows over the whole ``fit`` call, compilation and input packing included. The floor columns use the
compiled step's FLOP count (XLA cost analysis) against the machine's matmul ceiling, plus the row floor: each step's
distinct table rows (the mean over the epoch's first 32 batches) times the four random row accesses a row-sparse
Adagrad step cannot avoid (gather the row and its accumulator, scatter-add both) at the in-run JAX gather and
scatter-add rates (``--ceiling-rows`` uniform indices into an 840,543 x 16 table). The body column times the
model body alone (``benchmarks.common.body_seconds``: interaction, MLPs, heads and loss, forward and backward, in
the step's chunks), the part of a step that XLA's matmuls and fusions set: a 10x budget below it cannot be met
without a faster body, whatever the embedding stage costs.

mlet_jax runs as the command line trains, re-run once with glibc's malloc tunables (:mod:`mlet_jax.runtime`);
DeepCTR-Torch's process gets the environment without them, as it would run alone.

Command (the BENCHMARKS.md table; about 25 minutes on the 2-core box)::

    export MLET_PEER_BENCH=../shared/peer_bench MLET_DEEPCTR_PYTHON=/tmp/venv-torch/bin/python
    .venv/bin/python -m benchmarks.bench_vs_deepctr --data /tmp/peer_bench/data/criteo_like \\
        --models DCN,DeepFM,AutoInt,xDeepFM --batch-sizes 1024 --n-train 250000 --out /tmp/vs_deepctr.jsonl

Smoke mode (seconds, no DeepCTR-Torch, tiny generated arrays)::

    .venv/bin/python -m benchmarks.bench_vs_deepctr --smoke

Expected: mlet_jax >= 5x DeepCTR-Torch's steady samples/s at batch 1024 for DCN, DeepFM and AutoInt with test AUC
within 0.002; xDeepFM's CIN is FLOP-bound on both sides, so its ratio is bounded by the FLOP floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_ceilings
from benchmarks.common import (
    DEEPCTR_PYTHON_ENV,
    PEER_BENCH_ENV,
    PEER_DATA_ENV,
    add_external_path,
    body_seconds,
    machine,
    require_path,
    step_gflop,
    timed,
)
from experiments.common import mean_std
from mlet_jax.data.base import batches
from mlet_jax.data.registry import load_dataset
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.io import atomic_write_text
from mlet_jax.models import build_model
from mlet_jax.optim import OptimizerSpec
from mlet_jax.runtime import reexec_with_tuned_malloc, untuned_env
from mlet_jax.training import TrainConfig, Trainer, fit

MODEL_NAMES = {"DCN": "dcn", "DeepFM": "deepfm", "AutoInt": "autoint", "xDeepFM": "xdeepfm", "NFM": "nfm",
               "WDL": "wdl"}
NO_L2 = {"l2_reg_embedding": 0.0, "l2_reg_linear": 0.0}
NO_L2_EXTRA = {"DCN": {"l2_reg_cross": 0.0}}


def write_tiny_arrays(prefix: str, n_train: int = 1024, n_test: int = 512, seed: int = 0) -> str:
    """A tiny data set in gen_data.py's ``.npz`` format (dense [N, 13], sparse [N, 26], vocab, label)."""
    rng = np.random.default_rng(seed)
    vocab = rng.integers(2, 200, 26).astype(np.int64)
    w = [rng.standard_normal(int(v)) for v in vocab]
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        sparse = np.stack([np.minimum(rng.geometric(0.05, n) - 1, v - 1) for v in vocab], 1).astype(np.int32)
        dense = rng.random((n, 13)).astype(np.float32)
        logit = sum(w[f][sparse[:, f]] for f in range(26)) / 3 + dense[:, 0] - 1
        label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        np.savez(f"{prefix}_{split}.npz", dense=dense, sparse=sparse, vocab=vocab, label=label, prob=label)
    return prefix


def _others_load() -> float:
    return os.getloadavg()[0]


def run_deepctr(args, model: str, batch: int) -> dict:
    kwargs = {} if args.deepctr_l2 == "default" else {**NO_L2, **NO_L2_EXTRA.get(model, {})}
    if model == "AutoInt":  # DeepCTR-Torch 0.3.0's AutoInt fixes l2_reg_linear = 0 and does not take it
        kwargs.pop("l2_reg_linear", None)
    cmd = [args.deepctr_python, os.path.join(args.peer_dir, "bench_deepctr.py"), "--data", args.data, "--models", model,
           "--batch-sizes", str(batch), "--embedding-dim", str(args.dim), "--lr", str(args.lr),
           "--threads", str(args.threads), "--n-train", str(args.n_train), "--n-test", str(args.n_test),
           "--seed", str(args.seed), "--model-kwargs", json.dumps(kwargs),
           "--omp-wait-policy", args.omp_wait_policy]
    # DeepCTR-Torch runs as it would alone: without the malloc tunables this process re-ran itself with
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=untuned_env())
    if out.returncode != 0:
        raise RuntimeError(f"bench_deepctr.py failed ({out.returncode}):\n{out.stderr[-3000:]}")
    rec = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    rec["steady_sps"] = rec["steady_samples_per_s"]
    rec["epoch_sps"] = rec["samples_per_s"]
    return rec


def run_mlet_jax(args, ds, model: str, batch: int, kind: str) -> dict:
    if kind == "single":  # DeepCTR-Torch's embedding init
        spec = EmbeddingSpec(kind="single", dim=args.dim, table_init="normal", table_std=1e-4)
    else:  # the paper's MLET init: U(+-1/sqrt(n_field)) tables, N(0, 0.5) projections
        spec = EmbeddingSpec(kind="mlet", dim=args.dim, inner_dim=args.inner_dim, table_init="uniform",
                             projection_std=args.projection_std)
    net = build_model(MODEL_NAMES[model], ds.schema, spec)
    trainer = Trainer(net, TrainConfig(optimizer=OptimizerSpec("adagrad", args.lr), loss_reduction="sum"))
    train, test = ds.train, ds.test
    load0 = _others_load()
    # init_s is as DeepCTR-Torch's build_s: not in the throughput
    state, init_s = timed(trainer.init, args.seed, next(batches(train, batch, seed=args.seed)))
    (state, hist), fit_wall = timed(fit, trainer, train, batch_size=batch, epochs=1, seed=args.seed, progress=False,
                                    state=state)
    m, eval_s = timed(trainer.evaluate, state.params, test, batch_size=4096)
    b0 = {"dense": train.dense[:batch], "ids": train.ids[:batch], "label": train.label[:batch]}
    flops = 1e9 * step_gflop(trainer, state, b0)
    body_ms = 1e3 * body_seconds(trainer, state, b0)
    rows = distinct_rows(trainer, train, batch, args.seed)
    steps = len(train) // batch
    return {"lib": "mlet_jax", "jax": jax.__version__, "model": model, "kind": kind,
            "inner_dim": args.inner_dim if kind == "mlet" else None, "n_train": len(train), "n_test": len(test),
            "batch_size": batch, "embedding_dim": args.dim, "steps": steps, "distinct_rows": round(rows, 1),
            "sparse_tables": trainer.config.sparse, "init_s": round(init_s, 3),
            "first_step_s": round(hist.first_step_seconds, 3),
            "fit_wall_s": round(fit_wall, 3), "steady_sps": round(hist.samples_per_second, 1),
            "epoch_sps": round(steps * batch / fit_wall, 1), "step_flops": flops, "body_ms": round(body_ms, 3),
            "test_auc": round(float(m["auc"]), 5), "test_logloss": round(float(m["logloss"]), 5),
            "eval_s": round(eval_s, 3), "loadavg_before": round(load0, 2), "loadavg_after": round(_others_load(), 2),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def distinct_rows(trainer: Trainer, train, batch: int, seed: int, n_batches: int = 32) -> float:
    """Mean distinct embedding-table rows of the epoch's first ``n_batches`` batches: the rows a row-sparse step
    gathers and updates."""
    counts = []
    for b in itertools.islice(batches(train, batch, seed=seed), n_batches):
        rows = np.asarray(trainer.stage.row_ids(jnp.asarray(b["ids"])))
        counts.append(np.unique(rows[rows >= 0]).size)
    return float(np.mean(counts))


def floor_ms(gflop: float, rows: float, ceil: dict) -> tuple[float, float]:
    """``(FLOP floor, row floor)`` of a single-layer Adagrad step in ms: its FLOPs at the matmul ceiling, and for
    every distinct row the four random row accesses no row-sparse Adagrad step avoids (gather the row and its
    accumulator, scatter-add both) at the in-run random-row rates (NaN without them)."""
    f_ms = 1e3 * gflop / ceil["matmul_gflops"]
    g, s = ceil.get("jax_random_Mrows_per_s"), ceil.get("jax_random_scatter_add_Mrows_per_s")
    r_ms = 1e3 * rows * (2 / (1e6 * g) + 2 / (1e6 * s)) if g and s and rows == rows else float("nan")
    return f_ms, r_ms


def run_ceilings(args) -> dict:
    out = subprocess.run([args.deepctr_python, os.path.join(args.peer_dir, "bench_ceilings.py"), "--threads",
                          str(args.threads), "--repeats", "3", "--no-torch"], capture_output=True, text=True,
                         check=False)
    recs = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    return {r["metric"]: r["median"] for r in recs if "metric" in r}


def _med(rs: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rs])) if rs else float("nan")


def _num(x: float) -> str:
    return "-" if x != x else f"{x:,.0f}"


def _ratio(a: float, b: float, digits: int) -> str:
    return "-" if a != a or b != b else f"{a / b:.{digits}f}x"


def _mean_sd(rs: list[dict], key: str) -> str:
    """``mean`` of one run, ``mean +- sd`` (sample sd) of several, ``-`` of none."""
    if not rs:
        return "-"
    mean, sd = mean_std([r[key] for r in rs])
    return f"{mean:.4f}" if len(rs) == 1 else f"{mean:.4f} +- {sd:.4f}"


def _gap(a: list[dict], b: list[dict], key: str = "test_auc") -> str:
    """``mean(a) - mean(b)`` with its Welch standard error ``sqrt(s_a^2 / n_a + s_b^2 / n_b)``.

    Unpaired: the same seed means different initial weights and data orders in the two libraries.
    """
    x, y = (np.array([r[key] for r in rs], float) for rs in (a, b))
    if not len(x) or not len(y):
        return "-"
    if len(x) == 1 or len(y) == 1:
        return f"{x.mean() - y.mean():+.4f} ({len(x)} / {len(y)} runs)"
    se = np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    return f"{x.mean() - y.mean():+.4f} +- {se:.4f} ({len(x)} / {len(y)} seeds)"


def markdown(rows: list[dict], ceil: dict, inner_dim: int = 64) -> str:
    """The per (model, batch) table of medians over repeats; ``ceil`` from :func:`run_ceilings` (may be empty)."""
    gflops = ceil.get("matmul_gflops") or ceil.get("numpy_matmul_fp32_gflops")
    lines = ["| model | batch | DeepCTR-Torch samples/s | mlet_jax single samples/s | ratio | "
             f"mlet_jax MLET k={inner_dim} samples/s | MLET slowdown | AUC DeepCTR / single / MLET | "
             "AUC single - DeepCTR (+- Welch se) | LogLoss DeepCTR / single / MLET | "
             "single: GFLOP/step, % of matmul ceiling | single: distinct rows/step, step / floor | "
             "single: body alone / rest of the step ms | 10x DeepCTR: step budget / floor ms (FLOPs + rows) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["batch_size"]) for r in rows}, key=lambda k: (list(MODEL_NAMES).index(k[0]), k[1]))
    for model, batch in keys:
        here = [r for r in rows if r["model"] == model and r["batch_size"] == batch]
        d = [r for r in here if r["lib"] == "deepctr-torch"]
        s = [r for r in here if r["lib"] == "mlet_jax" and r.get("kind") == "single"]
        m = [r for r in here if r["lib"] == "mlet_jax" and r.get("kind") == "mlet"]
        ds_, ss, ms = _med(d, "steady_sps"), _med(s, "steady_sps"), _med(m, "steady_sps")
        floor = row_floor = budget = body = ""
        body_ms = _med(s, "body_ms") if s and all("body_ms" in r for r in s) else float("nan")
        if body_ms == body_ms:
            body = f"{body_ms:.1f} / {1e3 * batch / ss - body_ms:.1f}"
        if s and gflops:
            gf = _med(s, "step_flops") / 1e9
            floor = f"{gf:.2f}, {100 * gf * ss / batch / gflops:.0f}%"
            n_rows = _med(s, "distinct_rows") if all("distinct_rows" in r for r in s) else float("nan")
            f_ms, r_ms = floor_ms(gf, n_rows, {**ceil, "matmul_gflops": gflops})
            if r_ms == r_ms:
                row_floor = f"{n_rows:,.0f}, {1e3 * batch / ss / (f_ms + r_ms):.1f}x"
            if d:  # the step time 10x DeepCTR-Torch's samples/s allows, against the floor
                b_ms = 1e3 * batch / (10 * ds_)
                fl = f_ms + (r_ms if r_ms == r_ms else 0.0)
                budget = (f"{b_ms:.1f} / {f_ms:.1f}" + (f" + {r_ms:.1f}" if r_ms == r_ms else "")
                          + (" (below the floor)" if b_ms < fl else "")
                          + (" (below the body alone)" if b_ms < body_ms else ""))
        auc = " / ".join(_mean_sd(rs, "test_auc") for rs in (d, s, m))
        ll = " / ".join(_mean_sd(rs, "test_logloss") for rs in (d, s, m))
        lines.append(f"| {model} | {batch} | {_num(ds_)} | {_num(ss)} | {_ratio(ss, ds_, 1)} | {_num(ms)} | "
                     f"{_ratio(ss, ms, 2)} | {auc} | {_gap(s, d)} | {ll} | {floor} | {row_floor} | {body} | {budget} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_external_path(ap, "--data", PEER_DATA_ENV, "PREFIX of the peer bench's PREFIX_{train,test}.npz")
    ap.add_argument("--models", default="DCN,DeepFM,AutoInt,xDeepFM")
    ap.add_argument("--batch-sizes", default="1024")
    ap.add_argument("--kinds", default="single,mlet", help="mlet_jax embedding kinds to run")
    ap.add_argument("--n-train", type=int, default=0, help="first N train rows (0 = all)")
    ap.add_argument("--n-test", type=int, default=0, help="first N test rows (0 = all)")
    ap.add_argument("--n-train-xdeepfm", type=int, default=0, help="xDeepFM's own --n-train (0 = as --n-train)")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--inner-dim", type=int, default=64)
    ap.add_argument("--projection-std", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--omp-wait-policy", default="", choices=("", "PASSIVE", "ACTIVE"),
                    help="OMP_WAIT_POLICY of DeepCTR-Torch's process ('' = libgomp's default, spin a while then "
                         "sleep: the fair setting, as it runs alone; PASSIVE, the peer bench's default for shared "
                         "machines, slows torch's small parallel regions)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1024)
    ap.add_argument("--deepctr-l2", choices=("0", "default"), default="0")
    add_external_path(ap, "--deepctr-python", DEEPCTR_PYTHON_ENV, "python of a venv with DeepCTR-Torch 0.3.0")
    add_external_path(ap, "--peer-dir", PEER_BENCH_ENV, "the peer bench folder (bench_deepctr.py, bench_ceilings.py)")
    ap.add_argument("--no-deepctr", action="store_true", help="mlet_jax only")
    ap.add_argument("--ceilings", action="store_true", help="also measure the machine's ceilings (bench_ceilings.py)")
    ap.add_argument("--smoke", action="store_true", help="tiny generated data, batch 64, no DeepCTR-Torch")
    ap.add_argument("--workdir", default=None, help="with --smoke: where the tiny arrays go (default: a new "
                    "temporary folder)")
    ap.add_argument("--ceiling-rows", type=int, default=1_000_000,
                    help="random row indices for the in-run gather / scatter-add ceilings of the row floor")
    ap.add_argument("--out", default="", help="append JSON lines here")
    ap.add_argument("--md", default="", help="write the markdown table here")
    ap.add_argument("--table-from", default="", help="only print the markdown table of this JSONL file's rows")
    ap.add_argument("--matmul-gflops", type=float, default=0.0,
                    help="with --table-from: the matmul ceiling (GFLOP/s) for the floor columns (default: the "
                         "file's own in-run ceiling, written since 2026-12-03)")
    args = ap.parse_args(argv)
    if args.table_from:
        if not os.path.isfile(args.table_from):
            ap.error(f"argument --table-from: {args.table_from} not found")
        with open(args.table_from) as fh:
            lines = [json.loads(x) for x in fh if x.startswith("{")]
        rows = [r for r in lines if "lib" in r]
        ceil = next((r["ceilings"] for r in reversed(lines) if "ceilings" in r), {})
        if args.matmul_gflops:
            ceil = {"matmul_gflops": args.matmul_gflops}
        table = markdown(rows, ceil, args.inner_dim)
        print(table)
        return rows
    if args.smoke:
        args.data = write_tiny_arrays(os.path.join(args.workdir or tempfile.mkdtemp(prefix="vs_smoke_"), "tiny"))
        args.no_deepctr, args.batch_sizes, args.inner_dim = True, "64", 8
        args.ceiling_rows = min(args.ceiling_rows, 10_000)
    require_path(ap, args.data, "--data", PEER_DATA_ENV, files=("_train.npz", "_test.npz"))
    if not args.no_deepctr or args.ceilings:
        require_path(ap, args.deepctr_python, "--deepctr-python", DEEPCTR_PYTHON_ENV)
        require_path(ap, args.peer_dir, "--peer-dir", PEER_BENCH_ENV, files=("/bench_deepctr.py", "/bench_ceilings.py"))

    full = load_dataset("arrays", args.data)
    rows: list[dict] = []
    ceil = run_ceilings(args) if args.ceilings else {}
    mm = [bench_ceilings.matmul_gflops(3)]  # this process's matmul ceiling, before and after the runs
    ceil["matmul_gflops"] = mm[0]["matmul_gflops"]
    rng = np.random.default_rng(0)  # the row floor's rates: uniform rows of a peer-sized 840,543 x 16 table
    ceil.update(bench_ceilings.jax_random_rows(
        rng.standard_normal((bench_ceilings.PEER_ROWS, 16), dtype=np.float32),
        rng.integers(0, bench_ceilings.PEER_ROWS, args.ceiling_rows).astype(np.int32), repeats=3))
    print(json.dumps({"ceilings": ceil, "matmul_before": mm[0]}), flush=True)

    def emit(rec, seed):
        rec.update(machine=machine(), data=args.data, seed=seed, deepctr_l2=args.deepctr_l2)
        rows.append(rec)
        line = json.dumps(rec)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")

    for rep in range(args.repeats):
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            if model not in MODEL_NAMES:
                raise SystemExit(f"unknown model {model}; choose from {list(MODEL_NAMES)}")
            n_tr = args.n_train_xdeepfm if (model == "xDeepFM" and args.n_train_xdeepfm) else args.n_train
            ds = full
            if n_tr or args.n_test:
                ds = dataclasses.replace(full, train=full.train.take(slice(0, n_tr or len(full.train))),
                                         test=full.test.take(slice(0, args.n_test or len(full.test))))
            for batch in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
                jobs = [("deepctr", None)] if not args.no_deepctr else []
                jobs += [("mlet_jax", k.strip()) for k in args.kinds.split(",") if k.strip()]
                if rep % 2:  # alternate who goes first
                    jobs.reverse()
                # repeat r runs both libraries with seed + r (init and data order), so AUC gaps get a spread
                a = argparse.Namespace(**{**vars(args), "n_train": n_tr, "seed": args.seed + rep})
                for lib, kind in jobs:
                    rec = run_deepctr(a, model, batch) if lib == "deepctr" else run_mlet_jax(a, ds, model, batch, kind)
                    rec["rep"] = rep
                    emit(rec, a.seed)
    mm.append(bench_ceilings.matmul_gflops(3))
    ceil["matmul_gflops"] = max(m["matmul_gflops"] for m in mm)
    print(json.dumps({"ceilings": ceil, "matmul_after": mm[1]}), flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps({"ceilings": ceil, "matmul": mm}) + "\n")
    table = markdown(rows, ceil, args.inner_dim)
    print(table)
    if args.md:
        atomic_write_text(args.md, table + "\n")
    return rows


if __name__ == "__main__":
    reexec_with_tuned_malloc()  # as the command line trains (mlet_jax.runtime)
    main()
