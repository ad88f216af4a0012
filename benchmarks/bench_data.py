"""Preprocessing and batching throughput: mlet_jax.data (polars, streaming) vs a pandas read_csv pipeline.

Generates a Criteo-Kaggle-format ``train.txt`` (40 tab-separated columns, empty and negative integers, empty hex
categoricals, Zipf-distributed ids), then in one run and on the same file:

* ``mlet_jax``: ``prepare("criteo", ...)`` -- parse, DLRM dense transform, train-fitted vocabularies, 7-day split,
  memory-mapped ``.npy`` cache;
* ``pandas``: ``pd.read_csv`` of the whole file, the same dense transform, per-field vocabularies fitted on the
  training days by ``value_counts`` and applied with ``map``, the same split, ``np.save`` of the same arrays;
* the batch iterator :func:`mlet_jax.data.batches` over the cached (memory-mapped) training split.

Command (about 3 minutes on the 2-core box; needs ``pip install pandas``)::

    .venv/bin/python -m benchmarks.bench_data --rows 2000000 --workdir /tmp/mlet_bench_data

Prints one JSON line with rows/s of both pipelines, their ratio and the batch iterator's samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import polars as pl

from benchmarks.common import machine, timed
from benchmarks.pandas_criteo import pandas_criteo
from mlet_jax.data import batches
from mlet_jax.data.registry import prepare

MARKER = ".written_by_bench_data"  # a --workdir holding it is this script's own (kept by --keep) and may be reused

VOCAB = (1460, 583, 100000, 100000, 305, 24, 12517, 633, 3, 93145, 5683, 100000, 3194, 27, 14992, 100000, 10,
         5652, 2173, 4, 100000, 18, 15, 100000, 105, 100000)


def generate(path: str, rows: int, seed: int = 0, chunk: int = 500_000) -> None:
    """Write a Criteo-format file with numpy + polars (no per-row Python)."""
    rng = np.random.default_rng(seed)
    pools = [pl.Series([f"{x:08x}" for x in rng.integers(0, 2**32, v)]) for v in VOCAB]
    with open(path, "wb") as fh:
        for lo in range(0, rows, chunk):
            m = min(chunk, rows - lo)
            cols = {"label": pl.Series(rng.random(m) < 0.25).cast(pl.Int8)}
            for i in range(13):
                x = np.floor(np.exp(rng.normal(1.5, 1.5, m))).astype(np.int64) - (rng.random(m) < 0.02) * 3
                cols[f"I{i + 1}"] = pl.Series(x).set(pl.Series(rng.random(m) < 0.2), None)
            for i, v in enumerate(VOCAB):
                r = np.minimum(rng.zipf(1.2, m) - 1, v - 1)
                s = pools[i].gather(r)
                cols[f"C{i + 1}"] = s.set(pl.Series(rng.random(m) < 0.1), None)
            pl.DataFrame(cols).write_csv(fh, separator="\t", include_header=False, null_value="")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--workdir", default=None,
                    help="scratch folder, missing, empty or this script's own (default: a new temporary one)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--keep", action="store_true", help="keep the generated file and caches")
    args = ap.parse_args(argv)
    wd = args.workdir
    if wd is None:
        args.workdir = tempfile.mkdtemp(prefix="mlet_bench_data_")
    elif os.path.exists(wd) and not os.path.isdir(wd):
        ap.error(f"argument --workdir: {wd} is not a folder")
    elif os.path.isdir(wd) and os.listdir(wd) and not os.path.exists(os.path.join(wd, MARKER)):
        ap.error(f"argument --workdir: {wd} is not empty and this script did not write it; give a new or empty one")
    created = args.workdir != wd or not os.path.exists(wd)
    os.makedirs(args.workdir, exist_ok=True)
    open(os.path.join(args.workdir, MARKER), "w").close()
    path = os.path.join(args.workdir, "train.txt")
    gen_s = 0.0
    if not (os.path.exists(path) and args.keep):
        _, gen_s = timed(generate, path, args.rows)
    res = {"rows": args.rows, "file_mb": round(os.path.getsize(path) / 2**20, 1), "generate_s": round(gen_s, 1),
           "machine": machine() | {"polars": pl.__version__}}
    cache = os.path.join(args.workdir, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    ds, ours = timed(prepare, "criteo", path, cache, rebuild=True)
    res |= {"mlet_s": round(ours, 2), "mlet_rows_per_s": round(args.rows / ours),
            "mlet_finalize_s": ds.meta["finalize_seconds"]}
    try:
        import pandas as pd

        n, pd_s = timed(pandas_criteo, path, os.path.join(args.workdir, "pandas_out"))
        assert n == args.rows
        res |= {"pandas": pd.__version__, "pandas_s": round(pd_s, 2), "pandas_rows_per_s": round(args.rows / pd_s),
                "speedup": round(pd_s / ours, 2)}
    except ImportError:
        res["pandas"] = "not installed"
    tr = ds.train
    for shuffle in (True, False):
        t, seen = time.perf_counter(), 0
        for b in batches(tr, args.batch_size, seed=0, shuffle=shuffle):
            seen += len(b["label"])
        dt = time.perf_counter() - t
        res[f"batches_{'shuffled' if shuffle else 'sequential'}_samples_per_s"] = round(seen / dt)
    res["batch_size"] = args.batch_size
    if not args.keep:  # only what this script wrote; the folder too if it made it
        for name in ("train.txt", "cache", "pandas_out", MARKER):
            target = os.path.join(args.workdir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
        if created:
            os.rmdir(args.workdir)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
