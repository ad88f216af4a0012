"""The cost of one spectra record (mlet_jax.spectra): the Gram method against the thin-QR method on one MLET table.

A random float32 table of ``--rows`` rows (split evenly over ``--fields`` fields) times ``--k`` x ``--d``
projections; every round times one call of each method, alternating (load drift hits both alike), after one
untimed call each (compilation). Prints one JSON object: the seconds of each call per method, their medians and the
QR/Gram ratio, and the machine. BENCHMARKS.md ("Embedding spectra") quotes it; ``--spectra-every N`` costs one such
call every N steps, kept off the throughput.

Command (about a minute on the project's 2-core CPU)::

    .venv/bin/python -m benchmarks.bench_spectra --rows 1000000 --k 64 --d 16 --fields 26 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics

from benchmarks.common import machine, timed


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_spectra", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--fields", type=int, default=26)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.rows, args.k, args.d, args.fields, args.rounds) < 1 or args.rows < args.fields:
        p.error("--rows, --k, --d, --fields and --rounds must be >= 1, and --rows >= --fields")

    import jax
    import numpy as np

    from mlet_jax import spectra

    rng = np.random.default_rng(args.seed)
    vocab = (args.rows // args.fields,) * args.fields
    params = {"table": jax.device_put(rng.standard_normal((sum(vocab), args.k), dtype=np.float32)),
              "projection": jax.device_put(rng.standard_normal((args.fields, args.k, args.d), dtype=np.float32))}
    calls = {m: (lambda m=m: spectra.table_singular_values(params, vocab, method=m)) for m in spectra.METHODS}
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {m: [] for m in calls}
    for _ in range(args.rounds):
        for m, fn in calls.items():
            times[m].append(timed(fn)[1])
    med = {m: statistics.median(t) for m, t in times.items()}
    rec = {"rows": sum(vocab), "k": args.k, "d": args.d, "fields": args.fields, "seconds": times,
           "median_s": med, "qr_over_gram": med["qr"] / med["gram"], "machine": machine()}
    print(json.dumps(rec))
    return rec


if __name__ == "__main__":
    main()
