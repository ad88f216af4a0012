"""Train-step time versus table size: row-sparse against dense table updates.

One DLRM with MLET embeddings (d = 16, k = 64) is trained on one fixed batch while the fused table grows from 10^4 to
10^7 rows. The dense path computes an ``n x k`` gradient and updates every row, so its step time grows with ``n``; the
row-sparse path gathers and updates only the batch's unique rows, so its step time should stay flat (the acceptance
bar: largest-n over smallest-n step time <= 1.3).

Command (the BENCHMARKS.md numbers; about 4 minutes on the 2-core CPU box, peak memory about 8 GB at 10^7 rows)::

    .venv/bin/python -m benchmarks.bench_sparse

The same-batch sparse runs are timed round-robin over the sizes (one step of each size per round), so load drift on a
shared machine hits every size alike. Quick look: ``--sizes 10000 100000 --steps 5``. ``--optimizer adagrad`` adds
the accumulator (another ``n x k`` array). ``--profile DIR`` writes a ``jax.profiler`` trace of the sparse steps at
the largest size.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import describe, machine, round_robin, timed, write_jsonl
from mlet_jax.embeddings import EmbeddingSpec, field_offsets
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer

N_FIELDS = 8


def vocab_for(n_total: int, n_fields: int = N_FIELDS) -> tuple[int, ...]:
    """``n_fields`` vocabularies summing to ``n_total``, skewed like Criteo's (a few huge fields, many small)."""
    w = np.geomspace(1.0, 1000.0, n_fields)
    v = np.maximum(1, np.floor(w / w.sum() * n_total)).astype(np.int64)
    v[-1] += n_total - v.sum()
    return tuple(int(x) for x in v)


def make_batch(vocab: tuple[int, ...], batch: int, num_dense: int, seed: int = 0) -> dict:
    """One batch whose ids are uniform in each field of ``vocab``."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, v, batch) for v in vocab], axis=1).astype(np.int32)
    return {"dense": rng.standard_normal((batch, num_dense)).astype(np.float32), "ids": ids,
            "label": (rng.random(batch) < 0.25).astype(np.float32)}


def time_steps(trainer: Trainer, batch: dict, params, steps: int, warmup: int = 2) -> tuple[float, float, float]:
    """``(median, min, compile+first)`` seconds per step on a fixed batch (``params`` are copied: steps donate)."""
    state, init_s = timed(trainer.init, 0, batch, params=jax.tree_util.tree_map(jnp.copy, params))
    batch = jax.device_put(batch)
    states, step = {"path": state}, {"path": trainer.train_step}
    del state  # the first step donates it
    first = sum(round_robin(step, states, lambda i: batch, warmup)["path"])
    times = round_robin(step, states, lambda i: batch, steps)["path"]
    del states
    return statistics.median(times), min(times), first + init_s


def interleaved_sparse(sizes, trainers: dict, batch: dict, rounds: int) -> dict:
    """Per-size step times of the row-sparse path, timed round-robin over the sizes.

    On a shared machine the load drifts over minutes; timing one step of every size per round puts each size under
    the same load, so the ratios between sizes stay meaningful.
    """
    b = jax.device_put(batch)
    states = {n: trainers[n].init(0, batch) for n in sizes}
    steps = {n: trainers[n].train_step for n in sizes}
    round_robin(steps, states, lambda i: b, 2)  # compile, then one warm step
    return round_robin(steps, states, lambda i: b, rounds)


def run(sizes, *, batch: int, steps: int, dense_max: int, optimizer: str, kind: str, num_dense: int = 13,
        uniform: bool = True, out: str | None = None, profile: str | None = None) -> list[dict]:
    """Time the paths at each size.

    ``ids="same"`` rows use one batch for every ``n`` (ids drawn inside the smallest size's vocabularies, so the
    unique rows per batch are the same and only the table grows); with ``uniform`` an extra sparse run per size draws
    ids uniformly over that size's vocabularies, so the unique rows per batch grow with ``n`` too.
    """
    spec = EmbeddingSpec(kind=kind, dim=16, inner_dim=64 if kind == "mlet" else None)
    opt = OptimizerSpec("sgd", lr=0.2) if optimizer == "sgd" else OptimizerSpec("adagrad", lr=0.02)
    same = make_batch(vocab_for(min(sizes)), batch, num_dense)
    rows = []
    models = {n: DLRM(vocab_sizes=vocab_for(n), num_dense=num_dense, embedding=spec) for n in sizes}
    times = interleaved_sparse(sizes, {n: Trainer(m, TrainConfig(optimizer=opt, sparse_tables=True))
                                       for n, m in models.items()}, same, steps)
    for n in sizes:
        uniq = len(np.unique(same["ids"] + field_offsets(vocab_for(n))[None, :]))
        row = {"n_total": n, "path": "sparse", "ids": "same", "kind": kind, "optimizer": optimizer, "batch": batch,
               "fields": N_FIELDS, "unique_rows": uniq, "steps": steps, "interleaved": True,
               "step_ms_median": statistics.median(times[n]) * 1e3, "step_ms_min": min(times[n]) * 1e3}
        print(json.dumps(row), flush=True)
        rows.append(row)
    jax.clear_caches()
    gc.collect()
    for n in sizes:
        vocab = vocab_for(n)
        model = DLRM(vocab_sizes=vocab, num_dense=num_dense, embedding=spec)  # the paper's Criteo MLPs
        params = Trainer(model).init_params(0, same)
        runs = [("dense", "same", same)]  # the same-batch sparse runs were timed above, interleaved
        if uniform:
            runs.append(("sparse", "uniform", make_batch(vocab, batch, num_dense, seed=1)))
        for path, ids, b in runs:
            if path == "dense" and n > dense_max:
                continue
            uniq = len(np.unique(b["ids"] + field_offsets(vocab)[None, :]))
            trainer = Trainer(model, TrainConfig(optimizer=opt, sparse_tables=path == "sparse"))
            nsteps = steps if path == "sparse" or n <= 10**5 else max(3, steps // 4)
            med, best, first = time_steps(trainer, b, params, nsteps)
            row = {"n_total": n, "path": path, "ids": ids, "kind": kind, "optimizer": optimizer, "batch": batch,
                   "fields": N_FIELDS, "unique_rows": uniq, "steps": nsteps, "step_ms_median": med * 1e3,
                   "step_ms_min": best * 1e3, "init_compile_s": first}
            print(json.dumps(row), flush=True)
            rows.append(row)
            if profile and path == "sparse" and n == max(sizes):
                state = trainer.init(0, b, params=jax.tree_util.tree_map(jnp.copy, params))
                with jax.profiler.trace(profile):
                    for _ in range(5):
                        state, m = trainer.train_step(state, b)
                    jax.block_until_ready(m["loss"])
                del state
            jax.clear_caches()
            gc.collect()
        del params
    if out:
        write_jsonl(out, rows)
    return rows


def report(rows: list[dict]) -> str:
    """A markdown table of median (min) step times, and the sparse largest/smallest ratios."""
    sizes = sorted({r["n_total"] for r in rows})
    get = {(r["n_total"], r["path"], r["ids"]): r for r in rows}

    def cell(key):
        r = get.get(key)
        return "-" if r is None else f"{r['step_ms_median']:.1f} ({r['step_ms_min']:.1f})"

    lines = ["| rows n | unique rows / batch | sparse (ms) | dense (ms) | dense / sparse | uniform ids: unique rows "
             "| uniform ids: sparse (ms) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        s, d, u = (get.get((n, p, i)) for p, i in (("sparse", "same"), ("dense", "same"), ("sparse", "uniform")))
        ratio = "-" if d is None else f"{d['step_ms_median'] / s['step_ms_median']:.1f}x"
        lines.append(f"| {n:.0e} | {s['unique_rows']} | {cell((n, 'sparse', 'same'))} | {cell((n, 'dense', 'same'))} "
                     f"| {ratio} | {'-' if u is None else u['unique_rows']} | {cell((n, 'sparse', 'uniform'))} |")
    lines.append("")
    for ids in ("same", "uniform"):
        sp = [get[(n, "sparse", ids)] for n in sizes if (n, "sparse", ids) in get]
        if len(sp) > 1:
            lines.append(f"sparse step, largest / smallest n ({ids} ids): median "
                         f"{sp[-1]['step_ms_median'] / sp[0]['step_ms_median']:.2f}x, min "
                         f"{sp[-1]['step_ms_min'] / sp[0]['step_ms_min']:.2f}x (bar: <= 1.3x)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6, 10**7])
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20, help="timed steps (dense at n > 1e5 runs a quarter)")
    p.add_argument("--dense-max", type=int, default=10**7, help="skip the dense path above this many rows")
    p.add_argument("--optimizer", choices=["sgd", "adagrad"], default="sgd")
    p.add_argument("--kind", choices=["mlet", "single"], default="mlet")
    p.add_argument("--no-uniform", action="store_true", help="skip the uniform-ids sparse runs")
    p.add_argument("--out", default=None, help="JSONL output path")
    p.add_argument("--profile", default=None, help="write a jax.profiler trace of the largest sparse run here")
    a = p.parse_args(argv)
    print(f"machine: {describe(machine())}")
    rows = run(a.sizes, batch=a.batch, steps=a.steps, dense_max=a.dense_max, optimizer=a.optimizer, kind=a.kind,
               uniform=not a.no_uniform, out=a.out, profile=a.profile)
    print(report(rows))


if __name__ == "__main__":
    main()
