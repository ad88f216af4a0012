"""The main job (``make demo``): DLRM with single-layer versus MLET embeddings, and the control MLET must beat.

    python -m mlet_jax.demo --out results/demo

Trains DLRM (SGD lr 0.2, batch 256, one epoch: the paper's DLRM settings; Avazu-sized bottom MLP 256 -> 128 -> d)
on the synthetic default (100k training rows) at d in {2, 4, 8}, three seeds each, with

* single-layer embeddings (the paper's baseline),
* MLET embeddings (k = 64, projection init std 0.25, the paper's DLRM setting),
* controls: single-layer embeddings whose *table* learning rate is multiplied by 4 (what MLET's projection does to
  a step at init: its squared singular values are about k * std^2 = 4) and by 64.

Prints a table of test AUC and LogLoss (mean +- std over seeds) with MLET's gain over the baseline and over the
best control, checks that every collapsed MLET model reproduces its logits, and writes ``results.json`` and
``auc_vs_d.png`` to ``--out``. About 3-4 minutes on a quiet 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.io import OutputExistsError, atomic_write_text, check_output_dir, claim_output_dir
from mlet_jax.runtime import reexec_with_tuned_malloc
from mlet_jax.train import RunConfig, run

COLLAPSE_TOL = 1e-5
DEMO_FILES = ("results.json", "auc_vs_d.png")  # what --out receives; an earlier run's folder holds only these


def variants(k: int, mults: tuple[float, ...]) -> list[tuple[str, str, float]]:
    """(name, embedding kind, table lr multiplier) of every trained variant."""
    return [("single", "single", 1.0), (f"mlet_k{k}", "mlet", 1.0),
            *[(f"single_lr_x{m:g}", "single", m) for m in mults]]


def summarize(rows: list[dict], ds: tuple[int, ...], names: list[str]) -> list[dict]:
    """Mean and std of test AUC / LogLoss per (variant, d); MLET's gain over the baseline and the best control."""
    out = []
    for d in ds:
        entry = {"d": d}
        for name in names:
            sel = [r for r in rows if r["variant"] == name and r["d"] == d]
            for m in ("test_auc", "test_logloss"):
                v = np.array([r[m] for r in sel])
                entry[f"{name}/{m}/mean"] = float(v.mean())
                entry[f"{name}/{m}/std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        mlet, controls = names[1], names[2:]
        entry["mlet_gain_auc"] = entry[f"{mlet}/test_auc/mean"] - entry["single/test_auc/mean"]
        best = max(controls, key=lambda c: entry[f"{c}/test_auc/mean"]) if controls else None
        entry["best_control"] = best
        if best:
            entry["mlet_minus_best_control_auc"] = entry[f"{mlet}/test_auc/mean"] - entry[f"{best}/test_auc/mean"]
        out.append(entry)
    return out


def format_table(summary: list[dict], names: list[str]) -> str:
    head = "   d | " + " | ".join(f"{n:<17}" for n in names) + " | MLET gain | MLET - best control"
    lines = ["test AUC (mean +- std over seeds)", head, "-" * len(head)]
    for e in summary:
        cells = [f"{e[f'{n}/test_auc/mean']:.4f} +- {e[f'{n}/test_auc/std']:.4f}" for n in names]
        ctrl = e.get("mlet_minus_best_control_auc")
        lines.append(f"{e['d']:>4} | " + " | ".join(cells) + f" | {e['mlet_gain_auc']:+.4f}   | "
                     + (f"{ctrl:+.4f} ({e['best_control']})" if ctrl is not None else "-"))
    lines += ["", "test LogLoss (mean +- std over seeds)", head.split(" | MLET")[0], "-" * len(head)]
    for e in summary:
        cells = [f"{e[f'{n}/test_logloss/mean']:.4f} +- {e[f'{n}/test_logloss/std']:.4f}" for n in names]
        lines.append(f"{e['d']:>4} | " + " | ".join(cells))
    return "\n".join(lines)


def plot(summary: list[dict], names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = [e["d"] for e in summary]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    styles = {names[0]: ("tab:gray", "o", "-"), names[1]: ("tab:blue", "s", "-")}
    for i, name in enumerate(names):
        color, marker, ls = styles.get(name, (plt.cm.Oranges(0.45 + 0.5 * (i - 2) / max(len(names) - 2, 1)), "^",
                                              "--"))
        mean = np.array([e[f"{name}/test_auc/mean"] for e in summary])
        std = np.array([e[f"{name}/test_auc/std"] for e in summary])
        ax.errorbar(d, mean, yerr=std, marker=marker, ls=ls, capsize=3, label=name, color=color)
    ax.set_xscale("log", base=2)
    ax.set_xticks(d, [str(x) for x in d])
    ax.set_xlabel("embedding dimension d")
    ax.set_ylabel("test AUC")
    ax.set_title("DLRM, synthetic default (mean +- std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlet_jax.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/demo", help="folder for results.json and auc_vs_d.png")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--d", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--n-train", type=int, default=100_000)
    p.add_argument("--projection-std", type=float, default=0.25)
    p.add_argument("--control-mults", type=float, nargs="*", default=[4.0, 64.0],
                   help="table learning-rate multipliers of the single-layer controls")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.n_train < 1000:
        p.error("--seeds must be >= 1 and --n-train >= 1000")
    try:  # before any training: never write into a folder of someone else's files
        check_output_dir(args.out, "--out", writes=DEMO_FILES)
    except (ValueError, OutputExistsError) as e:
        p.error(str(e))

    t0 = time.time()
    ds = make_synthetic(0, n_train=args.n_train, n_valid=0, n_test=30_000)
    vs = variants(args.k, tuple(args.control_mults))
    names = [v[0] for v in vs]
    rows = []
    for d in args.d:
        for name, kind, mult in vs:
            for seed in range(args.seeds):
                cfg = RunConfig(model="dlrm", embedding=kind, d=d, k=args.k if kind == "mlet" else None, seed=seed,
                                projection_std=args.projection_std, table_lr_mult=mult,
                                model_options=(("bottom_mlp", (256, 128)),))
                rec = run(cfg, ds)
                rows.append({"variant": name, "embedding": kind, "table_lr_mult": mult, "d": d, "seed": seed,
                             **{k: rec[k] for k in ("test_auc", "test_logloss", "test_pr_auc", "train_samples_per_s",
                                                    "params_train", "params_inference")},
                             "collapse_max_abs_diff": rec.get("collapse_max_abs_diff")})
                print(f"  d={d} {name:<16} seed={seed}: AUC {rec['test_auc']:.4f}  LogLoss {rec['test_logloss']:.4f}"
                      f"  ({rec['train_samples_per_s']:,.0f} samples/s)", flush=True)
    summary = summarize(rows, tuple(args.d), names)
    worst = max(r["collapse_max_abs_diff"] for r in rows if r["embedding"] == "mlet")
    claim_output_dir(args.out, "--out", writes=DEMO_FILES)
    result = {"format": "mlet_jax.demo/1", "rows": rows, "summary": summary, "collapse_max_abs_diff": worst,
              "seconds": time.time() - t0,
              "settings": {"model": "dlrm", "optimizer": "sgd", "lr": 0.2, "batch_size": 256, "epochs": 1,
                           "k": args.k, "projection_std": args.projection_std, "bottom_mlp": [256, 128],
                           "n_train": args.n_train, "seeds": args.seeds, "control_mults": args.control_mults}}
    atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(result, indent=1) + "\n")
    plot(summary, names, os.path.join(args.out, "auc_vs_d.png"))
    print()
    print(format_table(summary, names))
    ok = worst <= COLLAPSE_TOL
    print(f"\ncollapsed MLET models reproduce their logits: max |diff| = {worst:.2e} "
          f"({'OK' if ok else 'FAILED'}, tolerance {COLLAPSE_TOL:g})")
    print(f"wrote {args.out}/results.json and {args.out}/auc_vs_d.png in {time.time() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    reexec_with_tuned_malloc()
    sys.exit(main())
