"""One markdown report with every table and figure of a results folder, and a verdict per paper claim.

    python -m experiments.report --out experiments/results/quick

Expected runtime: seconds (reads the files the other experiments wrote; trains nothing). Expected result:
``OUT/report.md``. The verdicts are computed from the numbers, not written by hand: each claim says "reproduced",
"not reproduced" or "mixed", with the evidence.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from mlet_jax.io import atomic_write_text

SECTIONS = (
    ("Sweep: quality versus d and k (paper Figures 2-4, Table 2)", "sweep.md", "fig_sweep_"),
    ("Embedding-parameter savings (paper: 4-16x, up to 16x, 5.8x on average)", "savings.md", "fig_savings"),
    ("Most versus least frequent test samples (paper Table 3)", "frequency.md", "fig_frequency"),
    ("Projection init std (paper Figure 6)", "init_variance.md", "fig_init_variance"),
    ("Compression: SVD, hashing, INT8 (paper Table 4, Figures 5 and 7)", "compression.md", "fig_compression_"),
    ("Controls: is MLET more than a learning-rate change?", "controls.md", "fig_controls"),
    ("Tuned against tuned: same search budget, validation selection, paired fresh seeds", "tuned.md", "fig_tuned"),
    ("MLET against its isotropic twin (same mean enhancement, step by step; spectra)", "twin.md", "fig_twin"),
)


def _load(out, name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None


def verdicts(out: str) -> list[tuple[str, str, str]]:
    """``[(claim, verdict, evidence)]`` from the JSON files in ``out``."""
    res = []
    s = _load(out, "sweep_summary.json")
    if s:
        base = {(e["model"], e["d"]): e["test_auc_mean"] for e in s if e["k"] is None}
        gains = [(e["model"], e["d"], e["k"], e["test_auc_mean"] - base[(e["model"], e["d"])])
                 for e in s if e["k"] is not None and (e["model"], e["d"]) in base]
        pos = sum(g > 0 for *_, g in gains)
        per_model = {m: np.mean([g for mm, *_, g in gains if mm == m]) for m in sorted({g[0] for g in gains})}
        res.append(("MLET beats single-layer at equal d (k >= d)", _v(pos, len(gains)),
                    f"{pos}/{len(gains)} (model, d, k) cells have higher mean AUC; mean gain per model: "
                    + ", ".join(f"{m} {v:+.4f}" for m, v in per_model.items())))
        mono, tot = 0, 0
        for m, d in base:
            ks = sorted((e["k"], e["test_auc_mean"]) for e in s if e["model"] == m and e["d"] == d and e["k"])
            if len(ks) > 1:
                tot += 1
                mono += all(b[1] >= a[1] for a, b in zip(ks, ks[1:], strict=False))
        res.append(("Quality improves with k at fixed d", _v(mono, tot), f"{mono}/{tot} (model, d) have AUC "
                    "non-decreasing in k"))
        small = [(m, g) for m, d, k, g in gains if d == min(e["d"] for e in s)]
        big = [(m, g) for m, d, k, g in gains if d == max(e["d"] for e in s)]
        if small and big:
            a, b = np.mean([g for _, g in small]), np.mean([g for _, g in big])
            res.append(("Gains are largest at small d", "reproduced" if a > b else "not reproduced",
                        f"mean AUC gain {a:+.4f} at the smallest d vs {b:+.4f} at the largest d"))
    sv = _load(out, "savings.json")
    if sv:
        h = sv["headline"]
        res.append(("MLET at d matches single-layer at a larger d (paper: up to 16x, 5.8x mean)",
                    "reproduced" if h["max"] and not h["models_without_saving"] else
                    ("mixed" if h["max"] else "not reproduced"),
                    f"largest reductions {h['per_model_max']}; models without any: {h['models_without_saving']}"))
    fr = _load(out, "frequency.json")
    if fr and fr.get("mean_log"):
        es = fr["mean_log"]
        b_gt_a = sum(e["B_gt_A"] for e in es)
        b_pos = sum(e["B_least_frequent"] > 0 for e in es)
        res.append(("MLET helps the least frequent samples more than the most frequent (Table 3)",
                    _v(b_gt_a, len(es)), f"set B gain > set A gain in {b_gt_a}/{len(es)} (model, d, k); set B gain "
                    f"positive in {b_pos}/{len(es)} (frequency definition mean_log; other definitions below)"))
    iv = os.path.join(out, "init_variance.md")
    if os.path.exists(iv):
        txt = open(iv).read()
        vals = [(float(ln.split("|")[2]), ln.split("|")[6].strip()) for ln in txt.splitlines()
                if ln.startswith("| ") and "model" not in ln]
        aucs = [(s, float(a.split()[0])) for s, a in vals if a != "diverged"]
        if len(aucs) > 1:
            lo = aucs[0][1]
            best = max(a for _, a in aucs)
            res.append(("Too small a projection init std hurts (Figure 6)", "reproduced" if best > lo + 1e-3
                        else "not reproduced", f"AUC at std {aucs[0][0]}: {lo:.4f}; best over stds: {best:.4f}; "
                        f"diverged: {[s for s, a in vals if a == 'diverged']}"))
    cp = _load(out, "compression.json")
    if cp:
        t4 = [e for e in cp["table4"] if e["svd"] is not None and e["mlet"] is not None]
        w = sum(e["mlet"] > e["svd"] for e in t4)
        res.append(("MLET beats low-rank SVD at equal effective size (Table 4)", _v(w, len(t4)),
                    f"{w}/{len(t4)} (model, D, r) cells"))
        pts = cp["sizes"]
        idx = {(p["model"], p["embedding"], p["hashed"], p["precision"], p["d"]): p["test_auc"] for p in pts}
        hd = [idx[k] - idx[(k[0], k[1], True, k[3], k[4])] for k in idx if not k[2] and (k[0], k[1], True, k[3],
                                                                                       k[4]) in idx]
        res.append(("Hashing degrades quality", _v(sum(x > 0 for x in hd), len(hd)),
                    f"unhashed - hashed AUC mean {np.mean(hd) if hd else float('nan'):+.4f} over {len(hd)} pairs"))
        mh = [idx[k] - idx[(k[0], "single", True, k[3], k[4])] for k in idx
              if k[2] and k[1] != "single" and (k[0], "single", True, k[3], k[4]) in idx]
        res.append(("MLET improves hashed models", _v(sum(x > 0 for x in mh), len(mh)),
                    f"MLET+hash - single+hash AUC mean {np.mean(mh) if mh else float('nan'):+.4f} over {len(mh)}"))
        q = [idx[k] - idx[(k[0], k[1], k[2], "int8", k[4])] for k in idx if k[3] == "fp32"
             and (k[0], k[1], k[2], "int8", k[4]) in idx]
        res.append(("INT8 post-training quantization costs almost nothing", "reproduced" if q and
                    max(abs(x) for x in q) < 1e-3 else ("mixed" if q else "not reproduced"),
                    f"fp32 - int8 AUC: mean {np.mean(q) if q else float('nan'):+.5f}, max |.| "
                    f"{max(abs(x) for x in q) if q else float('nan'):.5f} over {len(q)} models"))
    ct = _load(out, "controls.json")
    if ct:
        ok = [e for e in ct if e["mlet_minus_best"]["mean"] - 2 * e["mlet_minus_best"]["se"] > 0]
        res.append(("MLET beats the best single-layer learning-rate control (not a paper claim; our control)",
                    _v(len(ok), len(ct)), "; ".join(
                        f"{e['model']}: MLET - single x1 {e['mlet_minus_single']['mean']:+.4f} +- "
                        f"{e['mlet_minus_single']['se']:.4f}, MLET - best (x{e['best_mult']:g}) "
                        f"{e['mlet_minus_best']['mean']:+.4f} +- {e['mlet_minus_best']['se']:.4f}" for e in ct)
                    + " (AUC, paired by seed, mean +- SE; 'reproduced' needs > 2 SE)"))
    tu = _load(out, "tuned.json")  # experiments/tuned.py
    if tu:
        cs = tu["comparisons"]
        res.append(("Tuned MLET beats tuned single-layer (same budget, validation selection; our control)",
                    _v(sum(c["verdict"].startswith("MLET") for c in cs), len(cs)), "; ".join(
                        f"k={c['k']}: {c['auc_diff']['mean']:+.4f} +- {c['auc_diff']['se']:.4f} ({c['verdict']})"
                        for c in cs) + " (test AUC, paired by seed; a win needs > 2 SE)"))
    tw = _load(out, "twin.json")  # experiments/twin.py
    if tw:
        c = next(c for c in tw["comparisons"] if (c["a"], c["b"]) == ("mlet", "twin"))
        res.append(("MLET's anisotropic weighting matters (MLET beats its isotropic twin; our control)",
                    "reproduced" if c["verdict"] == "mlet wins" else "not reproduced",
                    f"MLET - twin {c['auc_diff']['mean']:+.4f} +- {c['auc_diff']['se']:.4f} test AUC "
                    f"({c['verdict']}, n={c['auc_diff']['n']})"))
    return res


def _v(k, n):
    if n == 0:
        return "no data"
    return "reproduced" if k == n else ("not reproduced" if k == 0 else f"mixed ({k}/{n})")


NOTES = """How to read the verdicts: a claim is "reproduced" when every cell agrees in the direction of the mean over
seeds (no significance test, except the controls row, which asks for more than 2 standard errors). Means over few
seeds on a small synthetic dataset: a verdict on this data says what this generator does, not what Criteo or Avazu
do. The learning-rate controls choose the best multiplier on the test set, which favors the control; when MLET
loses to the best control by more than its standard error, its gain at this setting is explained by an effective
embedding learning-rate increase (``k * std^2`` for a fresh factorized row) rather than by the factorization."""


def describe(out: str) -> str:
    """The plan and wall time, from ``plan.json`` and ``timing.json`` when present."""
    plan, timing = _load(out, "plan.json"), _load(out, "timing.json")
    text = []
    if plan:
        seeds = {m: dict(map(tuple, plan["seeds"])).get(m, plan["default_seeds"]) for m in plan["models"]}
        text.append(f"Data: `{plan['dataset']}` {dict(map(tuple, plan['data_options']))}. Models {plan['models']} "
                    f"(DLRM: SGD lr 0.2; others: Adagrad lr 0.02; batch {plan['batch_size']}, {plan['epochs']} "
                    f"epoch), d {plan['ds']}, k {plan['ks']} (None = single-layer), seeds {seeds}.")
    if timing:
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in timing.items() if isinstance(v, (int, float)) and k != "total_s")
        text.append(f"Measured wall time {timing['total_s'] / 60:.1f} min on {timing['machine']['cpus']} CPUs "
                    f"(load average at the end {timing['machine']['load_avg_at_end'][2]:.1f}: a shared machine): "
                    f"{steps}.")
    text.append("Every number below is computed from `runs.jsonl` in this folder (one row per training run).")
    return " ".join(text)


def build(out: str, title: str = "MLET reproduction report", preamble: str | None = None) -> str:
    parts = [f"# {title}", "", preamble if preamble is not None else describe(out), ""]
    v = verdicts(out)
    if v:
        parts += ["## Which claims this run reproduces", "", "| claim | verdict | evidence |", "|---|---|---|"]
        parts += [f"| {c} | **{r}** | {e} |" for c, r, e in v] + ["", NOTES, ""]
    for head, md, fig in SECTIONS:
        path = os.path.join(out, md)
        if not os.path.exists(path):
            continue
        parts += [f"## {head}", "", open(path).read().strip(), ""]
        if fig:
            for f in sorted(os.listdir(out)):
                if f.startswith(fig) and f.endswith(".png"):
                    parts += [f"![{f}]({f})", ""]
    text = "\n".join(parts)
    atomic_write_text(os.path.join(out, "report.md"), text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    print(build(a.out))


if __name__ == "__main__":
    main(sys.argv[1:])
