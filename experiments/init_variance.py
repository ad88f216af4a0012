"""Quality versus the MLET projection's init std (paper Figure 6: DLRM, k = 32).

    python -m experiments.init_variance --quick --out experiments/results/quick

Expected runtime: quick plan 2 extra runs (DLRM, d = 4, k = 64, std in {0.01, 0.25, 1.0}; 0.25 is a sweep
run), ~30 s on a quiet 2-core
CPU. Expected result (paper): a too small std gives vanishing enhancement factors and poor quality (below the
single-layer baseline); quality rises with the std, and a too large std hurts convergence (here it may diverge,
recorded as such). The std's role is also a learning-rate role: see ``experiments.controls``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from experiments.common import base_config, mean_std, parse_plan_cli, pyplot, save_figure, style_axes
from experiments.store import plan_ensure
from mlet_jax.io import atomic_write_text


def configs(plan):
    return [base_config(plan, m, plan.init_d, plan.init_k, seed, projection_std=std)
            for m in plan.init_models for std in plan.init_stds for seed in range(plan.init_seeds)]


def table(rows: list[dict], plan) -> list[dict]:
    out = []
    for m in plan.init_models:
        for std in plan.init_stds:
            g = [r for r in rows if r["model"] == m and abs(r["projection_std"] - std) < 1e-12]
            ok = [r["test_auc"] for r in g if not r["diverged"]]
            auc_mean, auc_std = mean_std(ok) if ok else (None, 0.0)
            out.append({"model": m, "std": std, "runs": len(g), "diverged": len(g) - len(ok),
                        "test_auc_mean": auc_mean, "test_auc_std": auc_std,
                        "test_logloss_mean": float(np.mean([r["test_logloss"] for r in g if not r["diverged"]]))
                        if ok else None})
    return out


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> dict:
    """Writes ``init_variance.md`` and ``fig_init_variance.png``."""
    rows = plan_ensure(plan, out, configs(plan), shard=shard, train=train, log=log)
    base = plan_ensure(plan, out, [base_config(plan, m, plan.init_d, None, s)
                                   for m in plan.init_models for s in range(plan.init_seeds)],
                       shard=shard, train=train, log=log)
    t = table(rows, plan)
    ref = {m: float(np.mean([r["test_auc"] for r in base if r["model"] == m])) for m in plan.init_models
           if any(r["model"] == m for r in base)}
    lines = [f"MLET d={plan.init_d}, k={plan.init_k}; single-layer reference at the same d: "
             + ", ".join(f"{m} {v:.4f}" for m, v in ref.items()), "",
             "| model | projection std | k * std^2 | runs | diverged | test AUC | test LogLoss |",
             "|---|---|---|---|---|---|---|"]
    for e in t:
        auc = "diverged" if e["test_auc_mean"] is None else f"{e['test_auc_mean']:.4f} +- {e['test_auc_std']:.4f}"
        ll = "" if e["test_logloss_mean"] is None else f"{e['test_logloss_mean']:.4f}"
        lines.append(f"| {e['model']} | {e['std']} | {plan.init_k * e['std'] ** 2:.3g} | {e['runs']} "
                     f"| {e['diverged']} | {auc} | {ll} |")
    atomic_write_text(os.path.join(out, "init_variance.md"), "\n".join(lines) + "\n")
    plot(t, ref, os.path.join(out, "fig_init_variance.png"), plan)
    return {"table": t, "single": ref}


def plot(t, ref, path, plan) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m in plan.init_models:
        pts = [e for e in t if e["model"] == m and e["test_auc_mean"] is not None]
        ax.errorbar([e["std"] for e in pts], [e["test_auc_mean"] for e in pts],
                    yerr=[e["test_auc_std"] for e in pts], marker="o", capsize=3, label=f"{m} MLET k={plan.init_k}")
        if m in ref:
            ax.axhline(ref[m], linestyle="--", color="gray", label=f"{m} single-layer")
    style_axes(ax, "projection init std", "test AUC", title=f"init std scan (d={plan.init_d})")
    save_figure(fig, path)


def main(argv=None):
    a, plan, kw = parse_plan_cli(__doc__, argv)
    print(run(plan, a.out, **kw))


if __name__ == "__main__":
    main(sys.argv[1:])
