"""Training throughput of the seven models, single-layer versus MLET embeddings.

Every model in :data:`mlet_jax.models.MODELS` with its default architecture (DLRM: the Criteo MLPs; the others:
DeepCTR-Torch 0.2.x's), d = 16, trained on batches of 1024 rows of the synthetic default (8 fields, 273k ids,
4 dense features) with the paper's optimizer (SGD lr 0.2 for DLRM, Adagrad lr 0.02 for the rest) and the default
row-sparse table updates. Single-layer (``n x d`` table) against MLET k = 64 (``n x k`` table times a ``k x d``
projection per field). Reported: samples per second (from the median step time) and the step-time ratio MLET / single.

The two kinds of one model are timed alternately, step by step (``--steps`` each, after a compile and a warm step),
so load drift on a shared machine hits both alike; the ratio is of the median step times (``ratio_min``: of the
fastest steps).

Command (the BENCHMARKS.md numbers; about 3 minutes on the 2-core CPU box, most of it compilation)::

    .venv/bin/python -m benchmarks.bench_models

Quick look: ``--models dcn wdl --steps 5``. ``--out FILE`` writes the rows as JSONL.
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax
import numpy as np

from benchmarks.common import machine, round_robin, timed, write_jsonl
from mlet_jax.data.base import batches
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.models import MODELS, build_model
from mlet_jax.models.presets import paper_embedding, paper_optimizer
from mlet_jax.runtime import reexec_with_tuned_malloc
from mlet_jax.training import TrainConfig, Trainer

KINDS = ("single", "mlet")


def run(models, *, dim: int = 16, inner_dim: int = 64, batch: int = 1024, steps: int = 20, n_batches: int = 16,
        out: str | None = None) -> list[dict]:
    """Time every model; return one row per model (and print it as JSON)."""
    data = make_synthetic(0, n_train=batch * n_batches, n_valid=0, n_test=1)
    staged = [jax.device_put(b) for b in batches(data.train, batch, seed=0)]
    rows = []
    for name in models:
        trainers, states, compile_s = {}, {}, {}
        for kind in KINDS:
            spec = paper_embedding(name, kind, dim, inner_dim if kind == "mlet" else None)
            trainer = Trainer(build_model(name, data.schema, spec), TrainConfig(optimizer=paper_optimizer(name)))

            def warm(trainer=trainer):
                state = trainer.init(0, staged[0])
                for b in staged[:2]:  # compile, then one warm step
                    state, m = trainer.train_step(state, b)
                return state

            (states[kind], compile_s[kind]), trainers[kind] = timed(warm), trainer
        # alternate step by step, so load drift hits both kinds alike
        per_step = round_robin({k: trainers[k].train_step for k in KINDS}, states,
                               lambda i: staged[i % len(staged)], steps)
        med = {k: statistics.median(v) for k, v in per_step.items()}
        row = {"model": name, "dim": dim, "inner_dim": inner_dim, "batch": batch,
               **{f"{k}_samples_per_s": batch / med[k] for k in KINDS},
               **{f"{k}_ms_per_step": 1e3 * med[k] for k in KINDS},
               **{f"{k}_ms_per_step_min": 1e3 * min(per_step[k]) for k in KINDS},
               "ratio_mlet_over_single": med["mlet"] / med["single"],
               "ratio_min": min(per_step["mlet"]) / min(per_step["single"]),
               **{f"{k}_compile_s": compile_s[k] for k in KINDS},
               "params_single": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(states["single"].params))),
               "params_mlet": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(states["mlet"].params))),
               "machine": machine()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if out:
        write_jsonl(out, rows)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | single (samples/s) | MLET k=64 (samples/s) | step time MLET / single (median; min) |",
             "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['single_samples_per_s']:,.0f} | {r['mlet_samples_per_s']:,.0f} | "
                     f"{r['ratio_mlet_over_single']:.2f}; {r['ratio_min']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--inner-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20, help="timed steps per kind")
    p.add_argument("--out", default=None, help="JSONL output path")
    a = p.parse_args(argv)
    rows = run(a.models, dim=a.dim, inner_dim=a.inner_dim, batch=a.batch, steps=a.steps, out=a.out)
    print(markdown(rows))


if __name__ == "__main__":
    reexec_with_tuned_malloc()
    main()
