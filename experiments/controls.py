"""Is MLET more than a learning-rate change? Single-layer baselines with the embedding learning rate multiplied
(quick plan: 2x, 8x, 64x; paper plan: 2x, 4x, 8x, 16x, 64x) against MLET, paired by seed.

    python -m experiments.controls --quick --out experiments/results/quick

Expected runtime: quick plan 12 extra runs (DLRM and DCN, d = 4, multipliers 2, 8, 64, 2 seeds), ~1.5 minutes on a quiet
2-core CPU (the MLET and x1 rows come from the sweep). Expected result: unknown a priori, which is the point. The
first step on a factorized row moves W by roughly ``k * std^2`` times a single-layer step (SGD; Adagrad similar in
scale), i.e. 4 for DLRM (k = 64, std 0.25) and 16 for DCN (k = 64, std 0.5): a large part of MLET's gain can be an
effective embedding learning-rate increase. A gain survives only if MLET beats the *best* control.

"MLET minus best control" pairs MLET and the control of the same seed (same data order; parameter init differs in
kind). The best multiplier is chosen by mean test AUC over seeds, on the test set itself, which favors the control;
the standard error is ``std(differences, ddof=1) / sqrt(seeds)``.
"""

from __future__ import annotations

import sys

import numpy as np

from experiments.common import base_config, mean_std, parse_plan_cli, write_results
from experiments.store import plan_ensure


def configs(plan):
    out = []
    for m in plan.models:
        for s in range(plan.n_seeds(m)):
            out.append(base_config(plan, m, plan.control_d, None, s))
            out.append(base_config(plan, m, plan.control_d, plan.control_k, s))
            out += [base_config(plan, m, plan.control_d, None, s, table_lr_mult=x) for x in plan.control_mults]
    return out


def paired(a: dict, b: dict) -> dict:
    """Mean and standard error of ``a[seed] - b[seed]`` over common seeds."""
    seeds = sorted(set(a) & set(b))
    diff = [a[s] - b[s] for s in seeds]
    mean, sd = mean_std(diff) if diff else (float("nan"), float("nan"))
    se = sd / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return {"mean": mean, "se": float(se), "n": len(diff), "diffs": [float(x) for x in diff]}


def analyze(rows: list[dict], plan, metric: str = "test_auc") -> list[dict]:
    """Per model: AUC per multiplier, the best control, MLET - x1 and MLET - best control (paired by seed)."""
    out = []
    for m in plan.models:
        sel = [r for r in rows if r["model"] == m and r["d"] == plan.control_d and not r["diverged"]]
        mlet = {r["seed"]: r[metric] for r in sel if r["k"] == plan.control_k and r["table_lr_mult"] == 1.0}
        ctrl = {}
        for r in sel:
            if r["k"] is None:
                ctrl.setdefault(r["table_lr_mult"], {})[r["seed"]] = r[metric]
        means = {x: float(np.mean(list(v.values()))) for x, v in sorted(ctrl.items())}
        if not mlet or 1.0 not in ctrl:
            continue
        best = max(means, key=means.get)
        std = next((r["projection_std"] for r in sel if r["k"] == plan.control_k), None)
        out.append({"model": m, "d": plan.control_d, "k": plan.control_k, "optimizer": sel[0]["optimizer"],
                    "k_std2": plan.control_k * std ** 2 if std else None,
                    "mlet": float(np.mean(list(mlet.values()))), "controls": means, "best_mult": best,
                    "diverged_controls": sorted({r["table_lr_mult"] for r in rows if r["model"] == m
                                                 and r["d"] == plan.control_d and r["k"] is None and r["diverged"]}),
                    "mlet_minus_single": paired(mlet, ctrl[1.0]), "mlet_minus_best": paired(mlet, ctrl[best]),
                    "best_minus_single": paired(ctrl[best], ctrl[1.0])})
    return out


def markdown(res: list[dict]) -> str:
    mults = sorted({x for e in res for x in e["controls"]})
    lines = ["| model (opt) | d | MLET k | k std^2 | MLET AUC | " + " | ".join(f"single x{x:g}" for x in mults)
             + " | best x | MLET - single x1 | MLET - best control | gain explained by lr |",
             "|---|---|---|---|---|" + "---|" * len(mults) + "---|---|---|---|"]
    for e in res:
        ms, mb = e["mlet_minus_single"], e["mlet_minus_best"]
        expl = (1 - mb["mean"] / ms["mean"]) if ms["mean"] > 0 else float("nan")
        cells = " | ".join(f"{e['controls'][x]:.4f}" if x in e["controls"] else "-" for x in mults)
        ks2 = e["k_std2"] or float("nan")
        lines.append(f"| {e['model']} ({e['optimizer']}) | {e['d']} | {e['k']} | {ks2:.3g} | {e['mlet']:.4f} "
                     f"| {cells} | x{e['best_mult']:g} | {ms['mean']:+.4f} +- {ms['se']:.4f} "
                     f"| {mb['mean']:+.4f} +- {mb['se']:.4f} | {expl:.0%} |")
    lines += ["", "Differences are test AUC, paired by seed (mean +- standard error over seeds). 'gain explained by "
              "lr' = 1 - (MLET - best control) / (MLET - single x1); > 100% means the best control beats MLET."]
    return "\n".join(lines)


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> list[dict]:
    """Writes ``controls.md`` and ``controls.json``."""
    rows = plan_ensure(plan, out, configs(plan), shard=shard, train=train, log=log)
    res = analyze(rows, plan)
    write_results(out, "controls", markdown(res), res)
    return res


def main(argv=None):
    a, plan, kw = parse_plan_cli(__doc__, argv)
    print(markdown(run(plan, a.out, **kw)))


if __name__ == "__main__":
    main(sys.argv[1:])
