"""Spectra of the embedding tables a model serves: singular values, effective rank and information abundance.

For each categorical field ``f`` the served table is ``W_f`` (``n_f x d``, the field's rows of the fused table; device
padding rows are never part of a field): a single-layer table's rows themselves, or for MLET the collapsed product
``T_f P_f`` of the field's rows of the wide table (``n_f x k``) and its projection (``k x d``). ``W_f`` is never
formed: ``"gram"`` (default) reduces the field's rows to their ``w x w`` Gram ``T_f^T T_f`` on the device (``w = k``
for MLET, ``d`` otherwise; one pass over the rows, a row-sharded table reduces across devices) and takes the
eigenvalues of the ``d x d`` matrix ``P_f^T (T_f^T T_f) P_f`` in float64 on the host; ``"qr"`` takes ``R_f`` of a thin
QR of the rows on the device and the SVD of ``R_f P_f`` (``k x d``) on the host. Both cost ``O(n_f w^2)``; the Gram
is one matmul pass (1M rows, k = 64 on this project's 2-core CPU: 7-22x faster than the QR, BENCHMARKS.md
"Embedding spectra"). It squares the condition number: with float32 tables a singular value ``s_i`` carries a
relative error of order ``1e-7 (s_1 / s_i)^2`` (measured on a float32 table against float64: 1e-5 at
``s_i = 0.01 s_1``, 9e-4 at ``0.001 s_1``, while the effective rank and information abundance moved by 3e-6
relative); ``"qr"`` keeps every value to ~1e-6. Float64 tables (x64) give both to float64 accuracy.

Per field:

* ``singular_values``: the ``min(n_f, w, d)`` singular values of ``W_f``, descending.
* ``effective_rank``: Roy and Vetterli's entropy effective rank ``exp(H(p))``, ``p_i = s_i / sum_j s_j``,
  ``H(p) = -sum_i p_i ln p_i`` (``0 ln 0 = 0``). It lies in ``[1, rank]`` and equals ``r`` for ``r`` equal non-zero
  singular values; an all-zero table has effective rank 0.
* ``information_abundance``: ``sum_i s_i / max_i s_i`` (Guo et al.), in ``[1, rank]``; 0 for an all-zero table.

:class:`SpectraCallback` records them every ``N`` steps of :func:`mlet_jax.training.fit` (``spectra_every=N`` or
``callbacks=[SpectraCallback(...)]``); the records go to the run log, ``History.spectra`` and the CLI's results JSON.

References:
    O. Roy and M. Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007, Eq. 3.
    X. Guo et al., "On the embedding collapse when scaling up recommendation models", arXiv:2310.04400, 2023, Eq. 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("gram", "qr")


def effective_rank(singular_values) -> float:
    """Roy and Vetterli's entropy effective rank ``exp(-sum_i p_i ln p_i)``, ``p_i = s_i / sum_j s_j``."""
    s = _check_sv(singular_values)
    total = s.sum()
    if not math.isfinite(total):
        return float("nan")
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def information_abundance(singular_values) -> float:
    """Guo et al.'s information abundance ``sum_i s_i / max_i s_i`` (0 for an all-zero spectrum)."""
    s = _check_sv(singular_values)
    top = s.max(initial=0.0)
    if top == 0:
        return 0.0
    return float(s.sum() / top)  # NaN for a NaN spectrum


def spectrum_stats(singular_values) -> dict[str, Any]:
    """``{"singular_values", "effective_rank", "information_abundance"}`` of one table (values sorted descending)."""
    s = np.sort(_check_sv(singular_values))[::-1]
    return {"singular_values": s.tolist(), "effective_rank": effective_rank(s),
            "information_abundance": information_abundance(s)}


def _check_sv(singular_values) -> np.ndarray:
    s = np.asarray(singular_values, np.float64).ravel()
    if np.any(s < 0):
        raise ValueError(f"singular values must be >= 0, got {s.min()!r}")
    return s  # NaN (a diverged table) gives NaN statistics


def embedding_params(params: Mapping) -> Mapping:
    """The embedding dictionary (``table``, and ``projection`` for MLET) of a model's parameters (or itself)."""
    if isinstance(params, Mapping) and "table" in params:
        return params
    emb = params.get("embeddings") if isinstance(params, Mapping) else None
    if isinstance(emb, Mapping) and "table" in emb:
        return emb
    keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
    raise KeyError(f"no embedding table in the parameters: expected 'table' or 'embeddings/table', got {keys}")


def _fields(vocab_sizes: Sequence[int]) -> tuple[tuple[int, int], ...]:
    out, lo = [], 0
    for n in vocab_sizes:
        out.append((lo, int(n)))
        lo += int(n)
    return tuple(out)


@functools.partial(jax.jit, static_argnames=("fields", "method"))
def _reduce_rows(table_NxW, fields, method):
    """Per field: the ``w x w`` Gram of its rows, or ``R`` (``min(n_f, w) x w``) of their thin QR."""
    hi = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on accelerators
    out = []
    for lo, n in fields:
        rows = jax.lax.slice_in_dim(table_NxW, lo, lo + n, axis=0)
        if method == "gram":
            out.append(jnp.matmul(rows.T, rows, precision=hi))
        else:
            out.append(jnp.linalg.qr(rows, mode="r"))
    return out


def _to_host(x) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x, np.float64)
    # several processes: the reduction's result is replicated, every process holds all of it
    return np.asarray(x.addressable_data(0), np.float64)


def table_singular_values(params: Mapping, vocab_sizes: Sequence[int], *, method: str = "gram") -> list[np.ndarray]:
    """Singular values (float64, descending) of each field's served table (see the module docstring).

    Args:
        params: a model's parameters (``state.params``) or its ``embeddings`` dictionary.
        vocab_sizes: rows per field, as given to the model.
        method: ``"gram"`` or ``"qr"``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    emb = embedding_params(params)
    table = emb["table"]
    if table.ndim != 2 or table.shape[0] < sum(int(n) for n in vocab_sizes):
        raise ValueError(f"table has shape {tuple(table.shape)} but vocab_sizes sum to {sum(vocab_sizes)} rows")
    proj = emb.get("projection")
    if proj is not None and (proj.ndim != 3 or proj.shape[0] != len(vocab_sizes) or proj.shape[1] != table.shape[1]):
        raise ValueError(f"projection must be [F={len(vocab_sizes)}, k={table.shape[1]}, d], got {tuple(proj.shape)}")
    fields = _fields(vocab_sizes)
    reduced = [_to_host(r) for r in _reduce_rows(table, fields, method)]
    proj_FxKxD = None if proj is None else _to_host(proj)
    out = []
    for f, ((_, n), r) in enumerate(zip(fields, reduced, strict=True)):
        p = None if proj_FxKxD is None else proj_FxKxD[f]
        width = table.shape[1] if p is None else p.shape[1]
        count = min(n, table.shape[1], width)
        if not (np.all(np.isfinite(r)) and (p is None or np.all(np.isfinite(p)))):
            out.append(np.full(count, np.nan))  # a diverged table: fit's NaN guard names the step
            continue
        if method == "gram":
            m = r if p is None else p.T @ r @ p
            lam = np.linalg.eigvalsh((m + m.T) / 2)[::-1][:count]
            s = np.sqrt(np.clip(lam, 0.0, None))
        else:
            s = np.linalg.svd(r if p is None else r @ p, compute_uv=False)[:count]
        out.append(s)
    return out


def table_spectra(params: Mapping, vocab_sizes: Sequence[int], *, method: str = "gram",
                  names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per field: ``{"field", "name", "rows", "singular_values", "effective_rank", "information_abundance"}``."""
    names = list(names) if names is not None else [str(f) for f in range(len(vocab_sizes))]
    if len(names) != len(vocab_sizes):
        raise ValueError(f"names has {len(names)} entries for {len(vocab_sizes)} fields")
    return [{"field": f, "name": names[f], "rows": int(vocab_sizes[f]), **spectrum_stats(s)}
            for f, s in enumerate(table_singular_values(params, vocab_sizes, method=method))]


def spectra_record(params: Mapping, vocab_sizes: Sequence[int], step: int, *, method: str = "gram",
                   names: Sequence[str] | None = None) -> dict[str, Any]:
    """One run-log record: ``{"event": "spectra", "step", "fields": [...], "mean_effective_rank",
    "mean_information_abundance"}`` (the means over fields)."""
    fields = table_spectra(params, vocab_sizes, method=method, names=names)
    return {"event": "spectra", "step": int(step), "fields": fields,
            "mean_effective_rank": float(np.mean([f["effective_rank"] for f in fields])),
            "mean_information_abundance": float(np.mean([f["information_abundance"] for f in fields]))}


class SpectraCallback:
    """A :func:`mlet_jax.training.fit` callback: the tables' spectra every ``every`` steps, before the first step and
    after the last.

    ``cb(step, state)`` returns a :func:`spectra_record` at the steps where :meth:`due` is true (``fit`` logs what a
    callback returns and keeps the time it takes out of the throughput), else ``None``. :meth:`on_start` and
    :meth:`on_end` record the state ``fit`` starts from and the last one it trained (when not already recorded).

    Args:
        vocab_sizes: rows per field (``model.vocab_sizes``).
        every: steps between records (>= 1).
        method: ``"gram"`` or ``"qr"`` (module docstring).
        names: field names for the records (default their indices).
    """

    def __init__(self, vocab_sizes: Sequence[int], every: int, *, method: str = "gram",
                 names: Sequence[str] | None = None):
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every (spectra_every) must be an integer >= 1, got {every!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.vocab_sizes, self.every, self.method = tuple(int(n) for n in vocab_sizes), every, method
        self.names = names
        self.last_step: int | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def _record(self, step: int, state) -> dict[str, Any]:
        self.last_step = int(step)
        return spectra_record(state.params, self.vocab_sizes, step, method=self.method, names=self.names)

    def __call__(self, step: int, state) -> dict[str, Any] | None:
        return self._record(step, state) if self.due(step) else None

    def on_start(self, step: int, state) -> dict[str, Any] | None:
        return self._record(step, state)

    def on_end(self, step: int, state) -> dict[str, Any] | None:
        return None if self.last_step == int(step) else self._record(step, state)


