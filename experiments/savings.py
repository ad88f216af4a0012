"""Embedding-parameter savings: the smallest d at which MLET matches or beats the single-layer model at a larger d
(the paper's "4-16x savings", "up to 16x, 5.8x on average").

    python -m experiments.savings --quick --out experiments/results/quick

Expected runtime: seconds after ``experiments.sweep``. Expected result (paper): for most models MLET at d matches
single-layer at 4-16 d. For each single-layer dimension D and each model, the table gives the smallest MLET d < D
(any k in the sweep) whose mean test AUC is at least the single-layer mean AUC at D, and the inference-time
embedding-parameter reduction D / d (the served table is n x d either way). "match" uses mean AUC over seeds, with
no allowance for noise, so read it with the std columns of ``sweep.md``.
"""

from __future__ import annotations

import sys

import numpy as np

from experiments import sweep
from experiments.common import parse_plan_cli, write_results


def savings(summary: list[dict], metric: str = "test_auc") -> list[dict]:
    """One entry per (model, single-layer D): the best (smallest-d) MLET configuration that matches it, if any."""
    higher = metric != "test_logloss"
    out = []
    for m in sorted({e["model"] for e in summary}):
        single = {e["d"]: e for e in summary if e["model"] == m and e["k"] is None}
        mlet = [e for e in summary if e["model"] == m and e["k"] is not None]
        for big, s in sorted(single.items()):
            target = s[f"{metric}_mean"]
            ok = [e for e in mlet if e["d"] < big
                  and (e[f"{metric}_mean"] >= target if higher else e[f"{metric}_mean"] <= target)]
            best = min(ok, key=lambda e: (e["d"], -e[f"{metric}_mean"] if higher else e[f"{metric}_mean"]),
                       default=None)
            out.append({"model": m, "single_d": big, "single": target,
                        "mlet_d": best["d"] if best else None, "mlet_k": best["k"] if best else None,
                        "mlet": best[f"{metric}_mean"] if best else None,
                        "reduction": big / best["d"] if best else None})
    return out


def headline(entries: list[dict]) -> dict:
    """Per model the largest reduction found; and the mean of those over models with any (paper: 16x / 5.8x)."""
    best: dict = {}
    for e in entries:
        if e["reduction"]:
            best[e["model"]] = max(best.get(e["model"], 1.0), e["reduction"])
    return {"per_model_max": best, "max": max(best.values(), default=None),
            "mean_of_model_max": float(np.mean(list(best.values()))) if best else None,
            "models_without_saving": sorted({e["model"] for e in entries} - set(best))}


def markdown(entries: list[dict], head: dict, metric: str = "test_auc") -> str:
    lines = [f"| model | single-layer d | single {metric} | smallest MLET d (k) | MLET {metric} | reduction |",
             "|---|---|---|---|---|---|"]
    for e in entries:
        if e["mlet_d"] is None:
            lines.append(f"| {e['model']} | {e['single_d']} | {e['single']:.4f} | none | | |")
        else:
            lines.append(f"| {e['model']} | {e['single_d']} | {e['single']:.4f} | {e['mlet_d']} ({e['mlet_k']}) "
                         f"| {e['mlet']:.4f} | {e['reduction']:.0f}x |")
    pm = ", ".join(f"{m} {v:.0f}x" for m, v in head["per_model_max"].items()) or "none"
    lines += ["", f"Largest reduction per model: {pm}. "
              + (f"Max {head['max']:.0f}x, mean over models {head['mean_of_model_max']:.1f}x."
                 if head["max"] else "No MLET configuration matched a larger single-layer model.")]
    return "\n".join(lines)


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> dict:
    """Writes ``savings.md`` and ``savings.json``."""
    summary = sweep.summarize(sweep.run(plan, out, shard=shard, train=train, log=log, write=False))
    entries = savings(summary)
    head = headline(entries)
    write_results(out, "savings", markdown(entries, head), {"entries": entries, "headline": head})
    return {"entries": entries, "headline": head}


def main(argv=None):
    a, plan, kw = parse_plan_cli(__doc__, argv)
    r = run(plan, a.out, **kw)
    print(markdown(r["entries"], r["headline"]))


if __name__ == "__main__":
    main(sys.argv[1:])
