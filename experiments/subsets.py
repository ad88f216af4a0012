"""The most and least frequent test samples, the measurement behind paper Table 3 that every run row records.

Definition of a sample's frequency (from the *training* id counts, ``Dataset.id_counts``; an id never seen in
training counts 0):

* ``mean_log`` (default): the mean over fields of ``log(1 + count_f(id_f))``, i.e. the log of the geometric mean
  of ``1 + count``. Every field contributes, so a sample is "rare" when its ids are rare across the board.
* ``min``: the count of the sample's rarest id (``min_f count_f(id_f)``); dominated by the largest fields.
* ``field:NAME``: the count of the id of one chosen field (e.g. ``field:C8``, or Avazu's ``field:device_ip``).

Set A is the ``frac`` (10%) of test samples with the highest frequency, set B the ``frac`` with the lowest (ties
broken by row order, stably). :func:`subset_metrics` gives the PR-AUC on both sets for every definition above
(fields: the two largest); :mod:`experiments.store` records it in every run row and :mod:`experiments.frequency`
tabulates it.
"""

from __future__ import annotations

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
