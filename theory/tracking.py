"""Singular values and enhancement-factor statistics of each MLET field, recorded during real training.

Two ways in:

* :class:`SpectrumTracker`: a callback for :func:`mlet_jax.training.fit` (``callbacks=[tracker]``), called as
  ``tracker(step, state)`` after every step; it records at the chosen steps (``steps=`` and/or ``every=``), copying
  what it keeps (the train state's buffers are donated).
* :func:`track_saved`: the same records from parameters saved at known steps.

Each record holds, per field, ``sigma1`` (length ``d``, zero-padded), ``sigma2`` (length ``min(k, n)``) and
statistics of the ``d x n`` enhancement factors ``sigma1(i)^2 + sigma2(j)^2`` (Eq. 13) computed in ``O(d k)`` without
building them: the ``n - r`` null-space columns of ``W2`` all equal ``sigma1^2`` and are counted with that weight.

References:
    Deng et al., MLET, arXiv:2309.15881, Eq. 13, Section 2.4 and Appendix A.3 (initialization variance).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from theory.params import find_embedding, from_params
from theory.spectral import count_nonzero_enhancement_factors, numerical_rank, right_basis


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, q * cum[-1], side="left")])


def field_spectrum(W1, W2) -> dict[str, Any]:
    """Singular values and enhancement-factor statistics of one field (paper notation: ``W1`` d x k, ``W2`` k x n).

    Returns:
        ``sigma1``, ``sigma2`` (lists), and over the ``d n`` factors ``E[i, j] = sigma1(i)^2 + sigma2(j)^2``:
        ``ef_min``, ``ef_median``, ``ef_mean``, ``ef_max``, ``ef_nonzero`` (numerically), ``ef_nonzero_closed_form``
        (Section 2.4), and ``ef_mean_sigma1_part`` / ``ef_mean_sigma2_part`` (the means of the two terms).
    """
    W1, W2 = np.asarray(W1, np.float64), np.asarray(W2, np.float64)
    d, k = W1.shape
    n = W2.shape[1]
    s1 = np.zeros(d)
    sv = np.linalg.svd(W1, compute_uv=False)
    s1[: sv.size] = sv
    s2 = right_basis(W2).sigma2
    r = s2.size
    # Distinct factor values: the d x r block (weight 1 each) and sigma1(i)^2 for the n - r null-space columns.
    block = s1[:, None] ** 2 + s2[None, :] ** 2
    values = np.concatenate([block.ravel(), s1**2])
    weights = np.concatenate([np.ones(d * r), np.full(d, float(n - r))])
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    nz1 = np.arange(d) < numerical_rank(s1, W1.shape)
    nz2 = np.arange(r) < numerical_rank(s2, W2.shape)
    return {
        "d": d, "k": k, "n": n,
        "sigma1": s1.tolist(), "sigma2": s2.tolist(),
        "ef_min": float(values.min()), "ef_max": float(values.max()),
        "ef_mean": float(np.sum(values * weights) / (d * n)),
        "ef_median": _weighted_quantile(values, weights, 0.5),
        "ef_mean_sigma1_part": float(np.mean(s1**2)), "ef_mean_sigma2_part": float(np.sum(s2**2) / n),
        "ef_nonzero": int(np.sum(nz1[:, None] | nz2[None, :]) + nz1.sum() * (n - r)),
        "ef_nonzero_closed_form": count_nonzero_enhancement_factors(d, k, n),
    }


def spectrum_record(params: Mapping, vocab_sizes: Sequence[int], step: int | None = None,
                    fields: Iterable[int] | None = None) -> dict[str, Any]:
    """``{"step": step, "fields": {f: field_spectrum(...)}}`` for an MLET model's parameters (all fields by
    default)."""
    find_embedding(params)  # a clear KeyError for single-layer parameters
    fields = range(len(vocab_sizes)) if fields is None else fields
    out = {}
    for f in fields:
        W1, W2 = from_params(params, vocab_sizes, f)
        out[int(f)] = field_spectrum(W1, W2)
    return {"step": step, "fields": out}


def track_saved(params_by_step: Mapping[int, Mapping] | Iterable[tuple[int, Mapping]], vocab_sizes: Sequence[int],
                fields: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """Records for parameters saved at known steps (``{step: params}`` or ``(step, params)`` pairs), by step."""
    items = params_by_step.items() if isinstance(params_by_step, Mapping) else params_by_step
    fields = None if fields is None else list(fields)
    return [spectrum_record(p, vocab_sizes, int(s), fields) for s, p in sorted(items, key=lambda t: t[0])]


class SpectrumTracker:
    """A training callback that records :func:`spectrum_record` at chosen steps.

    Args:
        vocab_sizes: rows per field, as given to the model.
        steps: steps to record at (the ``step`` argument the training loop passes).
        every: also record whenever ``step % every == 0``.
        fields: which fields (default all).

    Use: ``tracker = SpectrumTracker(schema.vocab_sizes, steps=[0, 10, 100]); fit(..., callbacks=[tracker]);
    tracker.records`` (or ``tracker.save(path)`` for JSON lines).
    """

    def __init__(self, vocab_sizes: Sequence[int], steps: Iterable[int] = (), every: int | None = None,
                 fields: Iterable[int] | None = None):
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.vocab_sizes = tuple(int(v) for v in vocab_sizes)
        self.steps = {int(s) for s in steps}
        self.every = every
        self.fields = None if fields is None else [int(f) for f in fields]
        self.records: list[dict[str, Any]] = []

    def wants(self, step: int) -> bool:
        return step in self.steps or (self.every is not None and step % self.every == 0)

    def __call__(self, step: int, state) -> None:
        if not self.wants(int(step)):
            return
        params = state.params if hasattr(state, "params") else state
        emb = find_embedding(params)
        # Copy now: the training loop donates the state's buffers to the next step.
        snapshot = {"table": np.array(emb["table"], np.float64), "projection": np.array(emb["projection"],
                                                                                       np.float64)}
        self.records.append(spectrum_record(snapshot, self.vocab_sizes, int(step), self.fields))

    def save(self, path: str | os.PathLike) -> None:
        """Write the records as JSON lines, atomically (temporary name, then rename)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            for rec in self.records:
                fh.write(json.dumps({"step": rec["step"], "fields": {str(k): v for k, v in rec["fields"].items()}})
                         + "\n")
        os.replace(tmp, path)
