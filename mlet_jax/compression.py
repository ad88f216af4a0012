"""Embedding-table compression that MLET is compared with and composed with (paper Section 3.3, Appendix A.4).

* Low-rank SVD (A.4.1): replace a trained ``n x D`` table by its best rank-``r`` approximation (Eckart-Young),
  stored as ``n x r`` and ``r x D`` factors. :func:`low_rank` per table, :func:`low_rank_fields` per field of a
  fused table.
* Hashing trick (A.4.2): ``id mod R`` on chosen fields; the paper hashes the two largest tables to half their height.
  :func:`hash_dataset` rewrites a :class:`~mlet_jax.data.Dataset` so any model trains on the hashed ids.
* INT8 post-training quantization (A.4.3): uniform symmetric, one scale per table, the scale chosen by a grid search
  that minimizes ``||x - dequantize(quantize(x, s), s)||_2``. :func:`int8_scale`, :func:`quantize`,
  :func:`dequantize`, and :func:`quantize_fields` / :func:`dequantize_fields` for a fused table.
* Relative table size (A.4.4): the sum of table sizes in units of an un-hashed float32 table of dimension 1
  (``d`` for float32, ``d / 8`` for INT8 with tables hashed to half height). :func:`relative_table_size`.

Fused tables follow :mod:`mlet_jax.embeddings`: fields stacked row-wise, ``vocab_sizes[f]`` rows each; "one table"
in the paper is one field's block here. :func:`map_embedding_tables` applies any of these to the ``table`` leaves
of a model's ``embeddings`` module (first-order ``linear`` weights are left alone, as the paper quantizes only the
embedding tables).

References:
    Deng et al., "Enhancing cross-category learning in recommendation systems with multi-layer embedding
    training" (MLET), arXiv:2309.15881, Appendix A.4. Attenberg et al. 2009 (hashing); Krishnamoorthi 2018
    (post-training quantization); Bhavana et al. 2019 (low-rank embeddings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mlet_jax.data.base import Dataset, Split
from mlet_jax.embeddings import field_offsets

# -- low-rank SVD ---------------------------------------------------------------------------------------------------


def low_rank(table_NxD, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-``rank`` factors of a table: ``A [N, r]`` and ``B [r, D]`` with ``A @ B`` closest in Frobenius norm.

    ``A = U_r S_r`` and ``B = V_r^T`` from the thin SVD; a rank at or above ``min(N, D)`` is exact.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    x = np.asarray(table_NxD, np.float64)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    r = min(rank, s.size)
    return (u[:, :r] * s[:r]).astype(np.float32), vt[:r].astype(np.float32)


def low_rank_table(table_NxD, rank: int) -> np.ndarray:
    """The rank-``rank`` truncation of a table, multiplied out (``[N, D]``)."""
    a, b = low_rank(table_NxD, rank)
    return a @ b


def low_rank_fields(table_NxD, vocab_sizes: Sequence[int], rank: int) -> np.ndarray:
    """Truncate each field's block of a fused table to rank ``rank`` (one SVD per table, as the paper)."""
    x = _check_fused(table_NxD, vocab_sizes)
    out = np.empty(x.shape, np.float32)
    for lo, n in zip(field_offsets(vocab_sizes), vocab_sizes, strict=True):
        out[lo:lo + n] = low_rank_table(x[lo:lo + n], rank)
    return out


def low_rank_params(vocab_sizes: Sequence[int], dim: int, rank: int) -> int:
    """Scalars stored by per-field rank-``rank`` factors (``n_f x r + r x D`` each, capped at ``n_f x D``)."""
    return int(sum(min(n * dim, n * min(rank, n, dim) + min(rank, n, dim) * dim) for n in vocab_sizes))


# -- hashing trick --------------------------------------------------------------------------------------------------


def hash_ids(ids, size: int) -> np.ndarray:
    """``id mod size`` (the paper's hash function); padding ``-1`` stays ``-1``."""
    if size < 1:
        raise ValueError(f"hash size must be >= 1, got {size}")
    ids = np.asarray(ids)
    return np.where(ids >= 0, ids % size, ids).astype(ids.dtype)


def largest_fields(vocab_sizes: Sequence[int], n: int = 2) -> tuple[int, ...]:
    """Indices of the ``n`` largest fields (ties broken by position), the paper's choice for hashing."""
    order = sorted(range(len(vocab_sizes)), key=lambda f: (-vocab_sizes[f], f))
    return tuple(sorted(order[:n]))


def hashed_vocab_sizes(vocab_sizes: Sequence[int], fields: Sequence[int], factor: float = 2.0) -> tuple[int, ...]:
    """Vocabulary sizes after hashing ``fields`` to ``ceil(n / factor)`` rows."""
    if factor < 1:
        raise ValueError(f"hash factor must be >= 1, got {factor}")
    bad = [f for f in fields if not 0 <= f < len(vocab_sizes)]
    if bad:
        raise ValueError(f"fields {bad} out of range for {len(vocab_sizes)} fields")
    return tuple(int(np.ceil(n / factor)) if f in set(fields) else int(n) for f, n in enumerate(vocab_sizes))


def hash_dataset(ds, fields: Sequence[int] | None = None, factor: float = 2.0):
    """A copy of dataset ``ds`` whose ``fields`` (default: the two largest) are hashed to ``1 / factor`` height.

    Every split is rewritten with ``id mod R_f``; ``id_counts`` are recomputed from the hashed training ids and
    ``meta["hashing"]`` records the fields and sizes.
    """
    schema = ds.schema
    fields = largest_fields(schema.vocab_sizes) if fields is None else tuple(int(f) for f in fields)
    sizes = hashed_vocab_sizes(schema.vocab_sizes, fields, factor)
    slot_field = schema.slot_field

    def rewrite(split):
        if split is None:
            return None
        ids = np.array(split.ids, copy=True)
        for f in fields:
            cols = np.flatnonzero(slot_field == f)
            ids[:, cols] = hash_ids(ids[:, cols], sizes[f])
        return Split(dense=split.dense, ids=ids, label=split.label)

    new_schema = dataclasses.replace(schema, vocab_sizes=sizes)
    meta = {**ds.meta, "hashing": {"fields": [schema.field_names[f] for f in fields], "factor": factor,
                                   "vocab_sizes": list(sizes)}}
    return Dataset(schema=new_schema, train=rewrite(ds.train), test=rewrite(ds.test), valid=rewrite(ds.valid),
                   name=f"{ds.name}-hashed", meta=meta)


# -- INT8 post-training quantization --------------------------------------------------------------------------------


def qmax(bits: int = 8) -> int:
    """Largest code of a symmetric ``bits``-bit quantizer (127 for INT8; codes in ``[-127, 127]``)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    return 2 ** (bits - 1) - 1


def quantize(x, scale: float, bits: int = 8) -> np.ndarray:
    """Symmetric uniform quantization: ``clip(round(x / scale), -qmax, qmax)`` as integers."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    q = np.clip(np.rint(np.asarray(x, np.float32) / np.float32(scale)), -qmax(bits), qmax(bits))
    return q.astype(np.int8 if bits <= 8 else np.int16)


def dequantize(q, scale: float) -> np.ndarray:
    """``q * scale`` as float32."""
    return np.asarray(q, np.float32) * np.float32(scale)


def scale_grid(x, bits: int = 8, points: int = 100) -> np.ndarray:
    """Candidate scales: ``max|x| * c / qmax`` for ``c`` in ``1/points, 2/points, ..., 1`` (clipping up to none)."""
    amax = float(np.max(np.abs(x))) if np.size(x) else 0.0
    if amax == 0.0:
        return np.ones(1)
    return amax * np.arange(1, points + 1) / points / qmax(bits)


def quantization_error(x, scale: float, bits: int = 8) -> float:
    """``||x - dequantize(quantize(x, scale), scale)||_2``."""
    x = np.asarray(x, np.float32)
    return float(np.sqrt(np.sum(np.square((x - dequantize(quantize(x, scale, bits), scale)).astype(np.float64)))))


def int8_scale(x, bits: int = 8, points: int = 100) -> float:
    """The scale on :func:`scale_grid` with the least L2 quantization error (the first one on ties)."""
    grid = scale_grid(x, bits, points)
    errs = [quantization_error(x, s, bits) for s in grid]
    return float(grid[int(np.argmin(errs))])


@dataclasses.dataclass(frozen=True)
class QuantizedTable:
    """A fused table stored as integer codes with one scale per field."""

    codes: np.ndarray
    scales: np.ndarray
    vocab_sizes: tuple[int, ...]
    bits: int = 8

    def dequantize(self) -> np.ndarray:
        return dequantize_fields(self)


def quantize_fields(table_NxD, vocab_sizes: Sequence[int], bits: int = 8, points: int = 100) -> QuantizedTable:
    """Quantize each field's block with its own grid-searched scale."""
    x = _check_fused(table_NxD, vocab_sizes)
    codes = np.empty(x.shape, np.int8 if bits <= 8 else np.int16)
    scales = np.empty(len(vocab_sizes), np.float64)
    for f, (lo, n) in enumerate(zip(field_offsets(vocab_sizes), vocab_sizes, strict=True)):
        scales[f] = int8_scale(x[lo:lo + n], bits, points)
        codes[lo:lo + n] = quantize(x[lo:lo + n], scales[f], bits)
    return QuantizedTable(codes, scales, tuple(int(v) for v in vocab_sizes), bits)


def dequantize_fields(qt: QuantizedTable) -> np.ndarray:
    """The float32 table a :class:`QuantizedTable` stands for."""
    out = np.empty(qt.codes.shape, np.float32)
    for f, (lo, n) in enumerate(zip(field_offsets(qt.vocab_sizes), qt.vocab_sizes, strict=True)):
        out[lo:lo + n] = dequantize(qt.codes[lo:lo + n], qt.scales[f])
    return out


def int8_roundtrip_fields(table_NxD, vocab_sizes: Sequence[int], bits: int = 8) -> np.ndarray:
    """Quantize then de-quantize a fused table (what the model sees after post-training quantization)."""
    return quantize_fields(table_NxD, vocab_sizes, bits).dequantize()


# -- relative table size --------------------------------------------------------------------------------------------


def relative_table_size(vocab_sizes: Sequence[int], dim: int, *, stored_vocab_sizes: Sequence[int] | None = None,
                        bits: int = 32, rank: int | None = None) -> float:
    """Embedding storage relative to un-hashed float32 tables of dimension 1 (paper A.4.4).

    Args:
        vocab_sizes: the un-hashed rows per field (the unit of size).
        dim: embedding dimension ``d`` served.
        stored_vocab_sizes: rows actually stored (after hashing); default ``vocab_sizes``.
        bits: bits per stored value (32 float32, 8 INT8).
        rank: if given, tables are stored as per-field rank-``rank`` factors (:func:`low_rank_params`).
    Returns:
        ``d`` for float32 un-hashed tables; ``d / 8`` for INT8 tables hashed to half height.
    """
    stored = tuple(vocab_sizes if stored_vocab_sizes is None else stored_vocab_sizes)
    if len(stored) != len(vocab_sizes):
        raise ValueError(f"{len(stored)} stored sizes for {len(vocab_sizes)} fields")
    scalars = low_rank_params(stored, dim, rank) if rank is not None else sum(stored) * dim
    return float(scalars * bits / 32 / sum(vocab_sizes))


# -- applying to a model's parameters -------------------------------------------------------------------------------


def map_embedding_tables(params: Mapping, fn: Callable[[np.ndarray], np.ndarray], module: str = "embeddings") -> dict:
    """Replace every ``table`` leaf inside a sub-tree named ``module`` by ``fn(table)`` (other leaves untouched).

    Use on collapsed (single-layer) parameters, e.g.
    ``map_embedding_tables(p, lambda t: int8_roundtrip_fields(t, vocab_sizes))``.
    """
    def walk(tree, inside):
        out = {}
        for k, v in tree.items():
            if isinstance(v, Mapping):
                out[k] = walk(v, inside or k == module)
            elif inside and k == "table":
                out[k] = np.asarray(fn(np.asarray(v)), np.float32)
            else:
                out[k] = v
        return out

    return walk(params, False)


def _check_fused(table_NxD, vocab_sizes: Sequence[int]) -> np.ndarray:
    x = np.asarray(table_NxD, np.float32)
    if x.ndim != 2 or x.shape[0] != sum(vocab_sizes):
        raise ValueError(f"expected a fused table with {sum(vocab_sizes)} rows, got shape {x.shape}")
    return x


__all__ = ["QuantizedTable", "dequantize", "dequantize_fields", "hash_dataset", "hash_ids", "hashed_vocab_sizes",
           "int8_roundtrip_fields", "int8_scale", "largest_fields", "low_rank", "low_rank_fields", "low_rank_params",
           "low_rank_table", "map_embedding_tables", "qmax", "quantization_error", "quantize", "quantize_fields",
           "relative_table_size", "scale_grid"]
