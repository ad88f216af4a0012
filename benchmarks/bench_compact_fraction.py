"""The compact step's capacity (``mlet_jax.row_sparse.COMPACT_FRACTION``) against the embedding part's step time.

Runs :func:`benchmarks.bench_torchrec.embedding_step` (dedup, compaction, gather, scatter-add, row-sparse SGD) on
the same Zipf ids as ``bench_torchrec`` (peer vocabularies, d 16), once compiled per fraction, the fractions
alternating step by step; prints each fraction's median and fastest step and its median ratio to the first. It only
sets the module constant for the compilation of its own steps; the library is not changed. ``--first-batch`` adds
the train step's default, a capacity of ``TrainConfig.compact_headroom`` times the first batch's distinct rows
(``fraction`` ``"first"`` in the rows).

Command (BENCHMARKS.md)::

    .venv/bin/python -m benchmarks.bench_compact_fraction --fractions 0.5 0.25 --first-batch
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-batch", action="store_true",
                   help="also the capacity the train step takes from its first batch (the library default)")
    a = p.parse_args(argv)
    if any(not 0 < f <= 1 for f in a.fractions):
        p.error("argument --fractions: every fraction must be in (0, 1]")
    if a.steps < 1 or any(b < 1 for b in a.batches):
        p.error("argument --steps/--batches: must be >= 1")

    import jax
    import numpy as np

    import mlet_jax.row_sparse as rsm
    from benchmarks.bench_torchrec import VOCAB, compact_plan_for, embedding_step, zipf_batches
    from benchmarks.common import machine

    old = rsm.COMPACT_FRACTION
    rows = []
    try:
        for b in a.batches:
            arr = zipf_batches(VOCAB, b, 8, 16, a.seed)
            ids = [jax.device_put(arr[f"ids_{b}"][i]) for i in range(8)]
            grad = jax.device_put(arr[f"grad_{b}"])
            offsets = np.concatenate([[0], np.cumsum(VOCAB)[:-1]])
            distinct = max(np.unique(arr[f"ids_{b}"][i] + offsets).size for i in range(8))
            runs = {}
            for f in a.fractions + (["first"] if a.first_batch else []):
                rsm.COMPACT_FRACTION = old if f == "first" else f
                first = arr[f"ids_{b}"][0] if f == "first" else None
                plan = compact_plan_for(VOCAB, b, first)
                init, step = embedding_step(VOCAB, b, 16, first_ids=first)
                compiled = step.lower(*init(0), ids[0], grad).compile()
                carry = init(0)
                for i in range(2):
                    *carry, _ = compiled(*carry, ids[i], grad)
                runs[f] = [compiled, carry, [], None if plan is None else plan[0] * plan[1]]
            for r in range(a.steps):
                for e in runs.values():
                    t0 = time.perf_counter()
                    *carry, out = e[0](*e[1], ids[r % 8], grad)
                    jax.block_until_ready((carry, out))
                    e[1] = carry
                    e[2].append(time.perf_counter() - t0)
            base = statistics.median(runs[a.fractions[0]][2])
            for f, e in runs.items():
                row = {"batch": b, "fraction": f, "capacity": e[3], "most_distinct_rows": int(distinct),
                       "falls_back": e[3] is not None and distinct > e[3],
                       "ms_median": 1e3 * statistics.median(e[2]), "ms_min": 1e3 * min(e[2]),
                       "ratio_to_first": statistics.median(e[2]) / base, "machine": machine()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        rsm.COMPACT_FRACTION = old
    return rows


if __name__ == "__main__":
    main()
