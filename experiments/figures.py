"""AUC and LogLoss versus embedding dimension d, one curve per inner dimension k plus the single-layer baseline
(paper Figures 2-4), one PNG per (dataset, model).

    python -m experiments.figures --quick --out experiments/results/quick

Expected runtime: seconds after ``experiments.sweep`` (missing sweep runs are trained first). Expected result
(paper): the MLET curves lie above (AUC) and below (LogLoss) the baseline, ordered by k, closest at large d.
"""

from __future__ import annotations

import os
import sys

from experiments import sweep
from experiments.common import parse_plan_cli, pyplot, save_figure, style_axes


def plot_model(summary: list[dict], model: str, path: str, title: str = "") -> None:
    """Two panels (AUC, LogLoss vs d, log2 axis) with mean +- std error bars."""
    plt = pyplot()

    entries = [e for e in summary if e["model"] == model]
    ks = sorted({e["k"] for e in entries}, key=lambda k: -1 if k is None else k)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "test_auc", "test AUC"), (axes[1], "test_logloss", "test LogLoss")):
        for k in ks:
            pts = sorted((e for e in entries if e["k"] == k), key=lambda e: e["d"])
            ax.errorbar([e["d"] for e in pts], [e[f"{metric}_mean"] for e in pts],
                        yerr=[e[f"{metric}_std"] for e in pts], marker="o" if k is None else "s", capsize=3,
                        color="black" if k is None else None, linestyle="--" if k is None else "-",
                        label="single-layer" if k is None else f"MLET k={k}")
        style_axes(ax, "embedding dimension d", label, log_base=2, legend_size=8 if ax is axes[0] else None)
    fig.suptitle(title or model)
    save_figure(fig, path)


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> list[str]:
    """One ``fig_sweep_<dataset>_<model>.png`` per model; returns the paths."""
    summary = sweep.summarize(sweep.run(plan, out, shard=shard, train=train, log=log, write=False))
    paths = []
    for m in sorted({e["model"] for e in summary}):
        path = os.path.join(out, f"fig_sweep_{plan.dataset}_{m}.png")
        plot_model(summary, m, path, f"{m} on {plan.dataset}: quality vs d (mean +- std over seeds)")
        paths.append(path)
    return paths


def main(argv=None):
    a, plan, kw = parse_plan_cli(__doc__, argv)
    print("\n".join(run(plan, a.out, **kw)))


if __name__ == "__main__":
    main(sys.argv[1:])
