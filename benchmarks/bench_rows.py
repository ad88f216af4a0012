"""The row traffic of one row-sparse Adagrad step alone, at the single-layer width d and the MLET width k.

Gathers the batch's slots from the table, scatter-adds their squared "gradients" into the accumulator, gathers the
accumulator back and scatter-adds the step into the table: the four random row passes every row-sparse Adagrad step
makes, nothing else. The rows are the slot-major table rows of consecutive 1024-row batches of the peer bench's
Criteo-like ``.npz`` (26 fields, 840,543 rows; ``--data PREFIX`` or ``$MLET_PEER_DATA``, as ``gen_data.py`` of the
peer bench wrote them), cycling through ``--batches`` of them so rows are not all cache-hot. The difference between
the two widths is the part of MLET's extra step time that no model code can remove (only a narrower table can).
BENCHMARKS.md quotes it.

Command::

    MLET_PEER_DATA=/tmp/peer_bench/data/criteo_like .venv/bin/python -m benchmarks.bench_rows
"""

from __future__ import annotations

import argparse
import json

from benchmarks.common import PEER_DATA_ENV, add_external_path, machine, require_path, timed


def slot_rows(sparse, vocab, batch: int, n_batches: int) -> list:
    """Per batch, int32 ``[F * batch]``: the fused-table row of every slot, slot-major (field 0's rows first)."""
    import jax.numpy as jnp
    import numpy as np

    rows = np.asarray(sparse) + np.concatenate([[0], np.cumsum(vocab)[:-1]])
    return [jnp.asarray(rows[i * batch:(i + 1) * batch].T.reshape(-1).astype(np.int32)) for i in range(n_batches)]


def row_step(table, acc, r):
    """The row passes of one row-sparse Adagrad step (lr 0.02) on rows ``r`` (repeats add up, as in a real step)."""
    import jax.numpy as jnp

    g = table[r] * 1e-3 + 1.0  # a gradient per slot: the row traffic, not the model
    acc = acc.at[r].add(g * g)
    return table.at[r].add(-0.02 * g / jnp.sqrt(acc[r])), acc


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_external_path(ap, "--data", PEER_DATA_ENV, "PREFIX of the peer bench's PREFIX_train.npz")
    ap.add_argument("--widths", default="16,64")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="random ids over a small table (tests)")
    args = ap.parse_args(argv)
    if not args.smoke:
        require_path(ap, args.data, "--data", PEER_DATA_ENV, files=("_train.npz",))

    import jax
    import jax.numpy as jnp
    import numpy as np

    if args.smoke:
        rng = np.random.default_rng(0)
        vocab = np.array([50, 300, 7])
        sparse = np.stack([rng.integers(0, v, args.batch * args.batches) for v in vocab], 1)
    else:
        z = np.load(f"{args.data}_train.npz")
        vocab, sparse = z["vocab"], z["sparse"][: args.batch * args.batches]
    n = int(vocab.sum())
    batches = slot_rows(sparse, vocab, args.batch, args.batches)
    f = jax.jit(row_step, donate_argnums=(0, 1))

    def one_pass(table, acc):
        for r in batches:
            table, acc = f(table, acc, r)
        return table, acc

    out = {}
    for _ in range(args.repeats):
        for w in [int(x) for x in args.widths.split(",")]:
            table, acc = jnp.zeros((n, w)), jnp.zeros((n, w))
            (table, acc), _ = timed(f, table, acc, batches[0])  # compile
            (table, acc), sec = timed(one_pass, table, acc)
            out.setdefault(w, []).append(sec / len(batches) * 1e3)
            del table, acc
    rec = {"rows": n, "slots_per_step": int(batches[0].size), "ms_per_step_best": {w: min(v) for w, v in out.items()},
           "ms_per_step_all": out, "machine": machine()}
    print(json.dumps(rec))
    return rec


if __name__ == "__main__":
    main()
