"""MLET versus single-layer on the most and least frequent test samples (paper Table 3).

    python -m experiments.frequency --quick --out experiments/results/quick

Expected runtime: seconds after ``experiments.sweep`` (it reads the sweep's rows; missing runs are trained first,
~5 minutes for the quick plan). Expected result (paper, Avazu): MLET improves PR-AUC on both subsets, and more on
the least frequent 10% (set B) than on the most frequent 10% (set A).

Definition of a sample's frequency (from the *training* id counts, ``Dataset.id_counts``; an id never seen in
training counts 0):

* ``mean_log`` (default): the mean over fields of ``log(1 + count_f(id_f))``, i.e. the log of the geometric mean
  of ``1 + count``. Every field contributes, so a sample is "rare" when its ids are rare across the board.
* ``min``: the count of the sample's rarest id (``min_f count_f(id_f)``); dominated by the largest fields.
* ``field:NAME``: the count of the id of one chosen field (e.g. ``field:C8``, or Avazu's ``field:device_ip``).

Set A is the ``frac`` (10%) of test samples with the highest frequency, set B the ``frac`` with the lowest (ties
broken by row order, stably). Each row of the sweep stores the PR-AUC on both sets for every definition above
(fields: the two largest), so the table costs no extra training.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from mlet_jax.metrics import pr_auc

DEFINITIONS = ("mean_log", "min")


def sample_frequency(ids_NxS, id_counts, schema, how: str = "mean_log") -> np.ndarray:
    """float64 ``[N]``: each sample's frequency under definition ``how`` (see the module docstring).

    Bag fields (several slots) use the mean log count (``mean_log``) or the rarest id (``min``, ``field:``) of the
    bag's non-padding ids.
    """
    ids = np.asarray(ids_NxS)
    per_field = []
    col = 0
    for f, s in enumerate(schema.slots):
        x = ids[:, col:col + s]
        c = np.where(x >= 0, np.asarray(id_counts[f])[np.maximum(x, 0)], -1).astype(np.float64)
        valid = x >= 0
        if how == "mean_log":
            v = np.where(valid, np.log1p(np.maximum(c, 0)), 0.0).sum(1) / np.maximum(valid.sum(1), 1)
        else:
            v = np.where(valid, c, np.inf).min(1)
            v = np.where(np.isinf(v), 0.0, v)
        per_field.append(v)
        col += s
    m = np.stack(per_field, 1)
    if how == "mean_log":
        return m.mean(1)
    if how == "min":
        return m.min(1)
    if how.startswith("field:"):
        name = how.split(":", 1)[1]
        if name not in schema.field_names:
            raise ValueError(f"frequency definition {how!r}: no field {name!r}; fields are {schema.field_names}")
        return m[:, schema.field_names.index(name)]
    raise ValueError(f"unknown frequency definition {how!r}; use mean_log, min or field:NAME")


def subsets(freq, frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the ``frac`` most frequent (set A) and least frequent (set B) samples."""
    if not 0 < frac <= 0.5:
        raise ValueError(f"frac must be in (0, 0.5], got {frac}")
    order = np.argsort(np.asarray(freq), kind="stable")
    m = max(1, int(round(frac * len(order))))
    return np.sort(order[-m:]), np.sort(order[:m])


def definitions(schema) -> tuple[str, ...]:
    """The definitions every sweep row records: mean_log, min, and the two largest fields."""
    big = sorted(range(schema.num_fields), key=lambda f: -schema.vocab_sizes[f])[:2]
    return DEFINITIONS + tuple(f"field:{schema.field_names[f]}" for f in sorted(big))


def subset_metrics(ds, logits, frac: float = 0.1) -> dict:
    """``{definition: {"top": PR-AUC on set A, "bottom": PR-AUC on set B, "ctr_top", "ctr_bottom"}}``."""
    out = {}
    y = np.asarray(ds.test.label)
    for how in definitions(ds.schema):
        a, b = subsets(sample_frequency(ds.test.ids, ds.id_counts, ds.schema, how), frac)
        out[how] = {"top": _safe_pr(y[a], logits[a]), "bottom": _safe_pr(y[b], logits[b]),
                    "ctr_top": float(y[a].mean()), "ctr_bottom": float(y[b].mean())}
    return out


def _safe_pr(y, s):
    return pr_auc(y, s) if 0 < y.sum() < len(y) else None


def table(rows: list[dict], how: str = "mean_log") -> list[dict]:
    """Relative PR-AUC improvement of MLET over single-layer (same model, d, seed) on sets A and B.

    Returns one entry per (model, d, k): mean over seeds of ``mlet / single - 1`` on each set, and the seeds used.
    """
    from experiments.sweep import is_plain

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
    from experiments import sweep

    rows = sweep.run(plan, out, shard=shard, train=train, log=log, write=False)
    schema_defs = sorted({h for r in rows for h in r.get("freq", {})}, key=lambda h: (h != "mean_log", h))
    res = {how: table(rows, how) for how in schema_defs}
    text = "\n\n".join(markdown(v, h) for h, v in res.items())
    sweep.write_text(f"{out}/frequency.md", text + "\n")
    sweep.write_text(f"{out}/frequency.json", json.dumps(res, indent=1))
    return res


def main(argv=None):
    from experiments.common import parse_plan_cli

    a, plan, kw = parse_plan_cli(__doc__, argv)
    run(plan, a.out, **kw)


if __name__ == "__main__":
    main(sys.argv[1:])
