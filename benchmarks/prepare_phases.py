"""Where ``prepare`` spends its time, in one process: wall and CPU seconds of the parse loop, of ``finalize`` and of
the per-field vocabulary fits (summed over the fit threads), for an A/B of a change to either phase.

    .venv/bin/python -m benchmarks.prepare_phases criteo /work/big/criteo_1m.txt
    .venv/bin/python -m benchmarks.prepare_phases avazu /work/big/avazu_1m

The cache goes to a fresh temporary directory, removed afterwards. Prints one JSON line. ``bench_prepare`` times
whole subprocesses against pandas; this one splits a run into phases (the import of polars and numpy, ~0.3 s, is
outside ``total_s``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time

import mlet_jax.data._build as build
from mlet_jax.data import avazu, criteo
from mlet_jax.data.registry import prepare


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(name: str, f, totals: dict):
    """``f`` adding its wall and process-CPU seconds to ``totals[name + '_s']`` and ``totals[name + '_cpu_s']``."""
    def g(*a, **k):
        t, c = time.perf_counter(), _cpu()
        try:
            return f(*a, **k)
        finally:
            totals[name + "_s"] = totals.get(name + "_s", 0.0) + time.perf_counter() - t
            totals[name + "_cpu_s"] = totals.get(name + "_cpu_s", 0.0) + _cpu() - c
    return g


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", choices=["criteo", "avazu"])
    ap.add_argument("input", help="the raw file (Criteo's train.txt or Avazu's train, or a prefix of either)")
    args = ap.parse_args(argv)
    totals: dict = {}
    for mod in (criteo, avazu):  # the modules call these by the names they imported
        mod.parse_text_blocks = timed("parse", build.parse_text_blocks, totals)
        mod.finalize = timed("finalize", build.finalize, totals)
    build._fit_field = timed("fits_summed", build._fit_field, totals)
    out = tempfile.mkdtemp(prefix="prepare_phases-")
    try:
        t = time.perf_counter()
        prepare(args.dataset, args.input, f"{out}/cache")
        totals["total_s"] = time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"dataset": args.dataset, "input": args.input,
                      **{k: round(v, 3) for k, v in sorted(totals.items())}}))


if __name__ == "__main__":
    main()
