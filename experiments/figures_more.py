"""PNGs for the report's tables that had none: savings, frequency sets A/B, learning-rate controls.

    python -m experiments.figures_more --quick --out experiments/results/quick

Expected runtime: seconds; trains nothing (reads ``savings.json``, ``frequency.json`` and ``controls.json``, skipping
those that are missing). Together with the sweep, init-std, compression, tuned and twin figures the quick report
has >= 8 PNGs, each under 1 MB (90 dpi).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from experiments.common import parse_plan_cli, pyplot, save_figure


def _load(out, name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None


def savings_figure(sv: dict, path: str) -> None:
    """Per model: single-layer AUC vs d, and the smallest-d MLET AUC that matches it (the reduction)."""
    plt = pyplot()
    models = sorted({e["model"] for e in sv["entries"]})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        es = sorted((e for e in sv["entries"] if e["model"] == m), key=lambda e: e["single_d"])
        ax.plot([e["single_d"] for e in es], [e["single"] for e in es], "o--", color="black", label="single-layer")
        for e in es:
            if e["mlet"] is not None:
                ax.plot([e["mlet_d"]], [e["mlet"]], "s", color="tab:blue")
                ax.annotate(f"{e['reduction']:g}x", (e["mlet_d"], e["mlet"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
                ax.plot([e["mlet_d"], e["single_d"]], [e["mlet"], e["single"]], ":", color="tab:blue", alpha=0.6)
        ax.plot([], [], "s", color="tab:blue", label="smallest MLET d matching it")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding dimension d")
        ax.set_ylabel("test AUC")
        ax.set_title(m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("embedding-parameter savings: MLET at a small d against single-layer at a larger d")
    save_figure(fig, path)


def frequency_figure(fr: dict, path: str) -> None:
    """Relative PR-AUC gain of MLET on the most (A) and least (B) frequent test samples, per definition."""
    plt = pyplot()
    defs = list(fr)
    fig, axes = plt.subplots(1, len(defs), figsize=(4 * len(defs), 4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], defs, strict=True):
        es = fr[name]
        labels = [f"{e['model']} d{e['d']}" for e in es]
        x = np.arange(len(es))
        ax.bar(x - 0.2, [100 * e["A_most_frequent"] for e in es], 0.4, label="A: most frequent 10%")
        ax.bar(x + 0.2, [100 * e["B_least_frequent"] for e in es], 0.4, label="B: least frequent 10%")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, labels, rotation=30, fontsize=8)
        ax.set_title(f"frequency: {name}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("MLET - single, relative PR-AUC (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("paper Table 3: does MLET help rare ids more?")
    save_figure(fig, path)


def controls_figure(ct: list, path: str) -> None:
    """Per model: single-layer AUC against the table-lr multiplier, MLET as a horizontal line."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(ct), figsize=(5 * len(ct), 4), squeeze=False)
    for ax, e in zip(axes[0], ct, strict=True):
        xs = sorted(float(x) for x in e["controls"])
        ax.plot(xs, [e["controls"][k] for k in sorted(e["controls"], key=float)], "o-", color="black",
                label="single-layer, table lr x mult")
        ax.axhline(e["mlet"], color="tab:blue", label=f"MLET k={e['k']}")
        if e.get("k_std2"):
            ax.axvline(e["k_std2"], color="gray", ls=":", label=f"k std^2 = {e['k_std2']:.3g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("table learning-rate multiplier")
        ax.set_ylabel("test AUC")
        ax.set_title(f"{e['model']} ({e['optimizer']}), d={e['d']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("controls: MLET against single-layer with a larger embedding learning rate (test-set choice)")
    save_figure(fig, path)


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> list[str]:
    """``fig_savings.png``, ``fig_frequency.png``, ``fig_controls.png`` from the results present; returns paths."""
    paths = []
    for name, make, fig in (("savings.json", savings_figure, "fig_savings.png"),
                            ("frequency.json", frequency_figure, "fig_frequency.png"),
                            ("controls.json", controls_figure, "fig_controls.png")):
        res = _load(out, name)
        if isinstance(res, dict) and "entries" in res:
            res = res if res["entries"] else None
        elif isinstance(res, dict):
            res = {k: v for k, v in res.items() if v} or None
        if not res:
            log(f"figures_more: no {name}; {fig} skipped")
            continue
        make(res, os.path.join(out, fig))
        paths.append(os.path.join(out, fig))
    return paths


def main(argv=None):
    a, plan, kw = parse_plan_cli(__doc__, argv)
    print("\n".join(run(plan, a.out, **kw)))


if __name__ == "__main__":
    main(sys.argv[1:])
