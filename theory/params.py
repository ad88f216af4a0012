"""From :mod:`mlet_jax`'s row-major parameter trees to the paper's column-major ``W1``, ``W2`` and ``G``.

In a model's parameters an MLET embedding is a dictionary with ``table`` (``[n_total, k]``, all fields stacked at the
row offsets of :func:`mlet_jax.embeddings.field_offsets`) and ``projection`` (``[F, k, d]``). For field ``f`` with
rows ``off_f .. off_f + n_f``: ``W2 = table[rows]^T`` (k x n) and ``W1 = projection[f]^T`` (d x k), so that
``W = W1 W2 = (table[rows] @ projection[f])^T``. A single-layer (or collapsed) table ``[n_total, d]`` gives
``W = table[rows]^T`` and its gradient ``G = grad_table[rows]^T``.

References:
    Deng et al., MLET, arXiv:2309.15881, Eq. 3 (``W = W1 W2``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def field_rows(vocab_sizes: Sequence[int], field: int) -> slice:
    """The stacked-table rows of ``field``."""
    if not 0 <= field < len(vocab_sizes):
        raise ValueError(f"field {field} out of range: the table has {len(vocab_sizes)} fields")
    off = int(sum(int(v) for v in vocab_sizes[:field]))
    return slice(off, off + int(vocab_sizes[field]))


def find_embedding(params: Mapping, require_projection: bool = True) -> Mapping:
    """The sub-dictionary holding ``table`` (and ``projection``): ``params["embeddings"]`` when present, else the
    first such dictionary found depth-first."""
    def ok(p):
        return isinstance(p, Mapping) and "table" in p and ("projection" in p or not require_projection)

    if ok(params):
        return params
    if "embeddings" in params and ok(params["embeddings"]):
        return params["embeddings"]
    for v in params.values():
        if isinstance(v, Mapping):
            try:
                return find_embedding(v, require_projection)
            except KeyError:
                pass
    what = "'table' and 'projection'" if require_projection else "'table'"
    raise KeyError(f"no dictionary with {what} in the parameter tree (top-level keys: {sorted(params)})")


def from_params(params: Mapping, vocab_sizes: Sequence[int], field: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W1, W2)`` in the paper's notation (``d x k``, ``k x n``, float64) for one field of an MLET model.

    Args:
        params: a model's parameter tree (or its ``embeddings`` dictionary), e.g. ``state.params``.
        vocab_sizes: rows per field, as given to the model.
        field: which field.
    """
    rows = field_rows(vocab_sizes, field)
    emb = find_embedding(params)
    table, proj = np.asarray(emb["table"], np.float64), np.asarray(emb["projection"], np.float64)
    if table.shape[0] != sum(vocab_sizes):
        raise ValueError(f"table has {table.shape[0]} rows but vocab_sizes sum to {sum(vocab_sizes)}")
    if proj.ndim != 3 or proj.shape[0] != len(vocab_sizes) or proj.shape[1] != table.shape[1]:
        raise ValueError(f"projection must be [F={len(vocab_sizes)}, k={table.shape[1]}, d], got {proj.shape}")
    return proj[field].T, table[rows].T


def field_matrix(table, vocab_sizes: Sequence[int], field: int) -> np.ndarray:
    """``W`` (d x n) of a single-layer table, or ``G`` (d x n) of its gradient: ``table[rows]^T`` in float64."""
    table = np.asarray(table, np.float64)
    if table.shape[0] != sum(vocab_sizes):
        raise ValueError(f"table has {table.shape[0]} rows but vocab_sizes sum to {sum(vocab_sizes)}")
    return table[field_rows(vocab_sizes, field)].T
