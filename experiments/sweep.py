"""Models x d x k x seeds (k = None: the single-layer baseline): the runs behind paper Figures 2-4 and Table 2.

    python -m experiments.sweep --quick --out experiments/results/quick          # DLRM + DCN, d 2/4/16, k 64
    python -m experiments.sweep --dataset avazu --data-dir DATA --out results/avazu   # the paper's grid
    python -m experiments.sweep --dataset avazu --data-dir DATA --out results/avazu --shard 1/4   # 4 workers

Expected runtime: quick plan 24 runs, ~3 minutes on a quiet 2-core CPU. Paper grid: hours per model on a GPU.
Expected result: ``sweep.md``, mean +- std of test AUC / LogLoss per (model, d, k); on the paper's data MLET beats
the single-layer model at equal d for k >= d, more so as k grows (saturating), and most at small d.

Its runs are rows of the run store (:mod:`experiments.store`, ``OUT/runs.jsonl``), shared with every other experiment.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from experiments.common import base_config, mean_std, parse_plan_cli
from experiments.store import is_plain, plan_ensure
from mlet_jax.io import atomic_write_text
from mlet_jax.train import RunConfig


def configs(plan, models: Sequence[str] | None = None, ds: Sequence[int] | None = None,
            ks: Sequence[int | None] | None = None, **over) -> list[RunConfig]:
    """The plan's grid: every model x d x k (only k >= d, as the paper) x seed, with ``over`` settings."""
    out, n_seeds = [], over.pop("n_seeds", None)
    for m in models or plan.models:
        for d in ds or plan.ds:
            for k in ks if ks is not None else plan.ks:
                if k is not None and k < d:
                    continue
                for seed in range(n_seeds or plan.n_seeds(m)):
                    out.append(base_config(plan, m, d, k, seed, **over))
    return out


def summarize(rows: list[dict], metrics=("test_auc", "test_logloss")) -> list[dict]:
    """Mean +- std (ddof=1; 0 for one seed) of each metric per (model, d, k) over plain rows."""
    groups: dict = {}
    for r in rows:
        if is_plain(r):
            groups.setdefault((r["model"], r["d"], r["k"]), []).append(r)
    out = []
    for (m, d, k), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -1 if kv[0][2] is None
                                                               else kv[0][2])):
        e = {"model": m, "d": d, "k": k, "n": len(g), "seeds": sorted(r["seed"] for r in g)}
        for name in metrics:
            e[f"{name}_mean"], e[f"{name}_std"] = mean_std(r[name] for r in g)
        out.append(e)
    return out


def markdown(summary: list[dict]) -> str:
    lines = ["| model | d | k | seeds | test AUC | test LogLoss | AUC vs single |", "|---|---|---|---|---|---|---|"]
    base = {(e["model"], e["d"]): e for e in summary if e["k"] is None}
    for e in summary:
        b = base.get((e["model"], e["d"]))
        gain = "" if b is None or e["k"] is None else f"{e['test_auc_mean'] - b['test_auc_mean']:+.4f}"
        lines.append(f"| {e['model']} | {e['d']} | {e['k'] if e['k'] is not None else 'single'} | {e['n']} "
                     f"| {e['test_auc_mean']:.4f} +- {e['test_auc_std']:.4f} "
                     f"| {e['test_logloss_mean']:.4f} +- {e['test_logloss_std']:.4f} | {gain} |")
    return "\n".join(lines)


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print, write: bool = True) -> list[dict]:
    """Train (or resume) the plan's sweep; writes ``sweep.md`` and ``sweep_summary.json``; returns the rows."""
    rows = plan_ensure(plan, out, configs(plan), shard=shard, train=train, log=log)
    if write:
        s = summarize(rows)
        atomic_write_text(os.path.join(out, "sweep.md"), markdown(s) + "\n")
        atomic_write_text(os.path.join(out, "sweep_summary.json"), json.dumps(s, indent=1) + "\n")
    return rows


def main(argv=None):
    a, plan, kw = parse_plan_cli(__doc__, argv)
    rows = run(plan, a.out, **kw)
    print(markdown(summarize(rows)))


if __name__ == "__main__":
    main(sys.argv[1:])
