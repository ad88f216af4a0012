"""MLET versus single-layer on the most and least frequent test samples (paper Table 3).

    python -m experiments.frequency --quick --out experiments/results/quick

Expected runtime: seconds after ``experiments.sweep`` (it reads the sweep's rows; missing runs are trained first,
~5 minutes for the quick plan). Expected result (paper, Avazu): MLET improves PR-AUC on both subsets, and more on
the least frequent 10% (set B) than on the most frequent 10% (set A).

Each row of the run store holds the PR-AUC on the most frequent ``frac`` (10%) of test samples (set A) and the least
frequent (set B) under every frequency definition of :mod:`experiments.subsets` (``mean_log``, ``min`` and the two
largest fields), so the table costs no extra training.
"""

from __future__ import annotations

import sys

import numpy as np

from experiments import sweep
from experiments.common import parse_plan_cli, write_results
from experiments.store import is_plain


def table(rows: list[dict], how: str = "mean_log") -> list[dict]:
    """Relative PR-AUC improvement of MLET over single-layer (same model, d, seed) on sets A and B.

    Returns one entry per (model, d, k): mean over seeds of ``mlet / single - 1`` on each set, and the seeds used.
    """
    base = {(r["model"], r["d"], r["seed"]): r for r in rows if r["k"] is None and is_plain(r)}
    acc: dict = {}
    for r in rows:
        if r["k"] is None or not is_plain(r) or (r["model"], r["d"], r["seed"]) not in base:
            continue
        s = base[(r["model"], r["d"], r["seed"])]
        fa, fs = r["freq"].get(how), s["freq"].get(how)
        if not fa or not fs or None in (fa["top"], fa["bottom"], fs["top"], fs["bottom"]):
            continue
        e = acc.setdefault((r["model"], r["d"], r["k"]), {"A": [], "B": [], "all": []})
        e["A"].append(fa["top"] / fs["top"] - 1)
        e["B"].append(fa["bottom"] / fs["bottom"] - 1)
        e["all"].append(r["test_pr_auc"] / s["test_pr_auc"] - 1)
    out = []
    for (m, d, k), e in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        out.append({"model": m, "d": d, "k": k, "seeds": len(e["A"]), "A_most_frequent": float(np.mean(e["A"])),
                    "B_least_frequent": float(np.mean(e["B"])), "all": float(np.mean(e["all"])),
                    "B_gt_A": bool(np.mean(e["B"]) > np.mean(e["A"]))})
    return out


def markdown(entries: list[dict], how: str) -> str:
    lines = [f"Relative PR-AUC improvement of MLET over single-layer (frequency: `{how}`; mean over seeds)", "",
             "| model | d | k | seeds | set A (top 10%) | set B (bottom 10%) | all test | B > A |",
             "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['model']} | {e['d']} | {e['k']} | {e['seeds']} | {e['A_most_frequent']:+.2%} "
                     f"| {e['B_least_frequent']:+.2%} | {e['all']:+.2%} | {'yes' if e['B_gt_A'] else 'no'} |")
    return "\n".join(lines)


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> dict:
    """Make sure the sweep's runs exist, then tabulate every frequency definition; writes ``frequency.md``."""
    rows = sweep.run(plan, out, shard=shard, train=train, log=log, write=False)
    schema_defs = sorted({h for r in rows for h in r.get("freq", {})}, key=lambda h: (h != "mean_log", h))
    res = {how: table(rows, how) for how in schema_defs}
    text = "\n\n".join(markdown(v, h) for h, v in res.items())
    write_results(out, "frequency", text, res)
    return res


def main(argv=None):
    a, plan, kw = parse_plan_cli(__doc__, argv)
    run(plan, a.out, **kw)


if __name__ == "__main__":
    main(sys.argv[1:])
