"""MLET versus low-rank SVD at equal effective size (paper Table 4), and MLET composed with the hashing trick and
INT8 post-training quantization: quality versus relative table size (paper Figures 5 and 7).

    python -m experiments.compression --quick --out experiments/results/quick

Expected runtime: quick plan 10 runs (DCN, d in {4, 16}, single-layer and MLET k = 64, tables unhashed
and hashed to half height; MLET k = 16 at d = 2, 4 for Table 4), ~2 minutes on a quiet 2-core CPU; the SVD
and INT8 evaluations reuse the trained models.
Expected result (paper): MLET at d = r beats a single-layer model of dimension D truncated to rank r, at every r;
hashing costs quality, MLET recovers part of it; INT8 costs almost nothing, so MLET + INT8 gives the best
quality per byte.

* SVD: a single-layer model is trained at ``d = D`` (``plan.svd_bases``); every embedding table is replaced by its
  rank-r truncation (:func:`mlet_jax.compression.low_rank_fields`) and the model re-evaluated. Effective size: r.
  MLET at ``d = r`` with ``k = D`` (from the sweep) has the same inference-time table size.
* Hashing: the two largest fields' ids are taken mod half their vocabulary (:func:`mlet_jax.compression.hash_dataset`)
  for training and test; INT8: every embedding table of the trained (collapsed) model is quantized with one
  grid-searched scale per table. Relative table size per :func:`mlet_jax.compression.relative_table_size`.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from experiments.common import base_config, load, parse_plan_cli, pyplot, save_figure, style_axes, write_results
from experiments.store import plan_ensure
from mlet_jax.compression import hash_dataset, relative_table_size

HASH_TAG = "|hash{factor:g}:two-largest"


def svd_ranks(plan, base: int) -> list[int]:
    return [r for r in plan.ds if r < base]


def requests(plan):
    """``[(config, evals, hashed)]`` of every run this experiment needs."""
    want: dict = {}
    for m in plan.svd_models:
        for base in plan.svd_bases:
            for s in range(plan.compression_seeds):
                c = base_config(plan, m, base, None, s)
                want.setdefault((c, False), set()).update(f"svd:{r}" for r in svd_ranks(plan, base))
                for r in svd_ranks(plan, base):
                    want.setdefault((base_config(plan, m, r, base, s), False), set())
    for m in plan.hash_models:
        for d in plan.hash_ds:
            for k in (None, plan.hash_k):
                if k is not None and k < d:
                    continue
                for s in range(plan.compression_seeds):
                    for hashed in (False, True):
                        want.setdefault((base_config(plan, m, d, k, s), hashed), set()).add("int8")
    return [(c, tuple(sorted(e)), h) for (c, h), e in want.items()]


def run_all(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> list[dict]:
    rows = []
    groups: dict = {}
    for c, ev, h in requests(plan):
        groups.setdefault((ev, h), []).append(c)
    for (ev, h), cfgs in groups.items():
        tag = plan.data_tag() + (HASH_TAG.format(factor=plan.hash_factor) if h else "")
        fn = (lambda: hash_dataset(load(plan), factor=plan.hash_factor)) if h else None
        got = plan_ensure(plan, out, cfgs, evals=ev, shard=shard, train=train, log=log, dataset_fn=fn, data_tag=tag)
        rows += [{**r, "hashed": h} for r in got]
    return rows


def table4(rows: list[dict], plan) -> list[dict]:
    """Per (model, D): SVD-truncated single-layer AUC and MLET (k = D) AUC at each effective size r."""
    out = []
    plain = [r for r in rows if not r["hashed"] and not r["diverged"]]
    for m in plan.svd_models:
        for base in plan.svd_bases:
            single = [r for r in plain if r["model"] == m and r["d"] == base and r["k"] is None]
            for rank in svd_ranks(plan, base):
                svd = [r["evals"][f"svd:{rank}"]["test_auc"] for r in single if f"svd:{rank}" in r["evals"]]
                mlet = [r["test_auc"] for r in plain if r["model"] == m and r["d"] == rank and r["k"] == base]
                out.append({"model": m, "base": base, "rank": rank,
                            "svd": float(np.mean(svd)) if svd else None, "mlet": float(np.mean(mlet)) if mlet else None,
                            "single_full": float(np.mean([r["test_auc"] for r in single])) if single else None,
                            "n_svd": len(svd), "n_mlet": len(mlet)})
    return out


def size_points(rows: list[dict], plan) -> list[dict]:
    """Quality versus relative table size for {single, MLET} x {float32, INT8} x {unhashed, hashed}."""
    pts: dict = {}
    for r in rows:
        if r["model"] not in plan.hash_models or r["diverged"] or "int8" not in r["evals"]:
            continue
        if r["d"] not in plan.hash_ds or (r["k"] is not None and r["k"] != plan.hash_k):
            continue
        base_vocab = [v for v in r["vocab_sizes"]] if not r["hashed"] else None
        for prec, auc, ll in (("fp32", r["test_auc"], r["test_logloss"]),
                              ("int8", r["evals"]["int8"]["test_auc"], r["evals"]["int8"]["test_logloss"])):
            key = (r["model"], "single" if r["k"] is None else f"MLET k={r['k']}", r["hashed"], prec, r["d"])
            e = pts.setdefault(key, {"auc": [], "logloss": [], "vocab": base_vocab, "stored": r["vocab_sizes"]})
            e["auc"].append(auc)
            e["logloss"].append(ll)
    full_vocab = {}
    for (m, _, h, _, _), e in pts.items():
        if not h and e["vocab"]:
            full_vocab[m] = e["vocab"]
    out = []
    for (m, emb, h, prec, d), e in sorted(pts.items(), key=lambda kv: str(kv[0])):
        vocab = full_vocab.get(m, e["stored"])
        size = relative_table_size(vocab, d, stored_vocab_sizes=e["stored"], bits=8 if prec == "int8" else 32)
        out.append({"model": m, "embedding": emb, "hashed": h, "precision": prec, "d": d, "relative_size": size,
                    "test_auc": float(np.mean(e["auc"])), "test_logloss": float(np.mean(e["logloss"])),
                    "n": len(e["auc"])})
    return out


def plot(points: list[dict], model: str, path: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    series = sorted({(p["embedding"], p["hashed"], p["precision"]) for p in points if p["model"] == model})
    for emb, h, prec in series:
        pts = sorted((p for p in points if p["model"] == model and (p["embedding"], p["hashed"], p["precision"])
                      == (emb, h, prec)), key=lambda p: p["relative_size"])
        ax.plot([p["relative_size"] for p in pts], [p["test_auc"] for p in pts],
                color="black" if emb == "single" else "tab:red", linestyle="--" if h else "-",
                marker="s" if prec == "int8" else "o", markerfacecolor="none" if prec == "int8" else None,
                label=f"{emb}{' + hash' if h else ''}{' + INT8' if prec == 'int8' else ''}")
    style_axes(ax, "relative table size (float32, un-hashed, d=1 -> 1)", "test AUC", log_base=2,
               title=f"{model}: MLET with hashing and INT8", legend_size=7)
    save_figure(fig, path)


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> dict:
    """Writes ``compression.md``, ``compression.json`` and ``fig_compression_<model>.png``."""
    rows = run_all(plan, out, shard=shard, train=train, log=log)
    t4, pts = table4(rows, plan), size_points(rows, plan)
    lines = ["MLET versus low-rank SVD at equal effective embedding size (test AUC; paper Table 4)", "",
             "| model | configuration | " + " | ".join(f"r = {r}" for r in sorted({e["rank"] for e in t4}))
             + " | full single-layer |", "|---|---|" + "---|" * (len({e["rank"] for e in t4}) + 1)]
    for m in plan.svd_models:
        for base in plan.svd_bases:
            es = {e["rank"]: e for e in t4 if e["model"] == m and e["base"] == base}
            ranks = sorted({e["rank"] for e in t4})
            full = next((e["single_full"] for e in es.values() if e["single_full"] is not None), None)
            for label, key in ((f"SVD d={base}", "svd"), (f"MLET k={base}", "mlet")):
                cells = " | ".join(f"{es[r][key]:.4f}" if r in es and es[r][key] is not None else "-" for r in ranks)
                lines.append(f"| {m} | {label} | {cells} | {f'{full:.4f}' if key == 'svd' and full else ''} |")
    lines += ["", "Quality versus relative table size (paper Figures 5 and 7; hashing: the two largest tables to "
              f"1/{plan.hash_factor:g} height)", "",
              "| model | embedding | hashed | precision | d | relative size | test AUC | test LogLoss |",
              "|---|---|---|---|---|---|---|---|"]
    for p in sorted(pts, key=lambda p: (p["model"], p["embedding"], p["hashed"], p["precision"], p["d"])):
        lines.append(f"| {p['model']} | {p['embedding']} | {'yes' if p['hashed'] else 'no'} | {p['precision']} "
                     f"| {p['d']} | {p['relative_size']:.3g} | {p['test_auc']:.4f} | {p['test_logloss']:.4f} |")
    write_results(out, "compression", "\n".join(lines), {"table4": t4, "sizes": pts})
    for m in plan.hash_models:
        if any(p["model"] == m for p in pts):
            plot(pts, m, os.path.join(out, f"fig_compression_{m}.png"))
    return {"table4": t4, "sizes": pts}


def main(argv=None):
    a, plan, kw = parse_plan_cli(__doc__, argv)
    run(plan, a.out, **kw)
    print(open(os.path.join(a.out, "compression.md")).read())


if __name__ == "__main__":
    main(sys.argv[1:])
