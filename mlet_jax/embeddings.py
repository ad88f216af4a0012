"""Single-layer and MLET (multi-layer, factorized) embeddings for many categorical fields at once.

All fields live in one table with per-field row offsets, so a batch does a single gather:

* single-layer: ``table`` of shape ``[n_total, d]``; ``emb[b, f] = table[off_f + id[b, f]]``.
* MLET:         ``table`` of shape ``[n_total, k]`` and ``projection`` of shape ``[F, k, d]`` (one bias-free
  ``k -> d`` linear layer per field, as in the authors' code); ``emb[b, f] = table[off_f + id[b, f]] @ projection[f]``.

In the paper's column-major notation a field's ``table`` is ``W2^T`` (n x k) and its ``projection`` is ``W1^T``
(k x d), so ``table @ projection = (W1 W2)^T``. :func:`collapse` multiplies the factors out once when training ends;
the collapsed single-layer parameters give the same logits and cost nothing extra at inference.

Every parameter leaf named ``table`` is indexed by the batch's fused row ids (``offsets[field] + id``); models may
hold more than one such table (for example a first-order ``linear`` table of width 1), and the row-sparse optimizer
path in :mod:`mlet_jax.training` relies on this convention.

References:
    Deng et al., "Enhancing cross-category learning in recommendation systems with multi-layer embedding
    training" (MLET), arXiv:2309.15881.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("single", "mlet")
INITS = ("uniform", "normal", "xavier")


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
    """How a model's categorical embeddings are parameterized and initialized.

    Attributes:
        kind: ``"single"`` (one ``n x d`` table) or ``"mlet"`` (``n x k`` table times a ``k x d`` projection).
        dim: the embedding dimension ``d`` the model sees.
        inner_dim: MLET's inner dimension ``k`` (required for ``"mlet"``; the paper uses ``k >= d``).
        table_init: ``"uniform"`` (U(+-1/sqrt(n_field)), DLRM and the authors' code), ``"normal"``
            (N(0, table_std), DeepCTR-Torch's default with std 1e-4) or ``"xavier"`` (Glorot uniform per field).
        table_std: standard deviation for ``table_init="normal"``.
        projection_init: ``"normal"`` (N(0, projection_std), the paper's appendix A.3), ``"uniform"``
            (U(+-1/sqrt(k))) or ``"xavier"``.
        projection_std: the projection's init std; the paper uses 0.25 for DLRM and 0.5 for the other models.
            Under Adagrad it acts like an embedding learning-rate multiplier, so treat it as a first-class setting.
    """

    kind: str = "single"
    dim: int = 16
    inner_dim: int | None = None
    table_init: str = "uniform"
    table_std: float = 1e-4
    projection_init: str = "normal"
    projection_std: float = 0.25

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"embedding kind must be one of {KINDS}, got {self.kind!r}")
        if self.dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {self.dim}")
        if self.kind == "mlet" and (self.inner_dim is None or self.inner_dim < 1):
            raise ValueError(f"MLET embeddings need inner_dim (k) >= 1, got {self.inner_dim}")
        if self.table_init not in INITS:
            raise ValueError(f"table_init must be one of {INITS}, got {self.table_init!r}")
        if self.projection_init not in INITS:
            raise ValueError(f"projection_init must be one of {INITS}, got {self.projection_init!r}")
        if self.table_std <= 0 or self.projection_std < 0:
            raise ValueError("table_std must be > 0 and projection_std >= 0")

    @property
    def width(self) -> int:
        """Columns of the stored table: ``k`` for MLET, ``d`` for single-layer."""
        return self.inner_dim if self.kind == "mlet" else self.dim

    def collapsed(self) -> EmbeddingSpec:
        """The single-layer spec that :func:`collapse`'d parameters belong to."""
        return dataclasses.replace(self, kind="single", inner_dim=None)


def field_offsets(vocab_sizes: Sequence[int]) -> np.ndarray:
    """int64 ``[F]``: first fused row of each field."""
    return np.concatenate([[0], np.cumsum(np.asarray(vocab_sizes, np.int64))[:-1]]).astype(np.int64)


def table_init(kind: str, vocab_sizes: Sequence[int], std: float = 1e-4):
    """A Flax initializer for a fused ``[n_total, width]`` table with a per-field scale."""

    def init(key, shape, dtype=jnp.float32):
        n_total, width = shape
        counts = np.asarray(vocab_sizes, np.int64)
        if kind == "normal":
            return std * jax.random.normal(key, shape, dtype)
        if kind == "uniform":
            bound = 1.0 / np.sqrt(counts.astype(np.float64))
        else:  # xavier: torch xavier_uniform on a [n_field, width] weight
            bound = np.sqrt(6.0 / (counts + width))
        # one draw, scaled field by field through static slices: a per-row scale vector would be an [n_total]
        # constant in the HLO (slower to compile), and one draw per field compiles F random-bit generators
        u = jax.random.uniform(key, shape, dtype, -1.0, 1.0)
        lo = np.concatenate([[0], np.cumsum(counts)])
        return jnp.concatenate([u[lo[f]:lo[f + 1]] * jnp.asarray(b, dtype) for f, b in enumerate(bound)])

    return init


def projection_init(kind: str, std: float):
    """A Flax initializer for the ``[F, k, d]`` MLET projections."""

    def init(key, shape, dtype=jnp.float32):
        _, k, d = shape
        if kind == "normal":
            return std * jax.random.normal(key, shape, dtype)
        bound = 1.0 / np.sqrt(k) if kind == "uniform" else np.sqrt(6.0 / (k + d))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def table_param(module: nn.Module, init, shape, dtype, ids_are_rows: bool, name: str = "table") -> jax.Array:
    """Declare a row table, or, on the row-sparse path, take the batch's gathered rows in its place.

    The row-sparse train step substitutes ``[U, width]`` unique rows for the ``[n_total, width]`` table, which
    ``Module.param`` would reject for its shape.
    """
    if ids_are_rows and module.has_variable("params", name):
        return module.get_variable("params", name)
    return module.param(name, init, shape, dtype)


class Embeddings(nn.Module):
    """Embeddings of all categorical fields: ``ids [B, S] -> emb [B, F, d]``.

    Attributes:
        vocab_sizes: rows per field.
        spec: the parameterization (:class:`EmbeddingSpec`).
        slots: slots per field (a bag / multi-hot field takes several slots padded with -1); ``None``: one each.
        pooling: ``"sum"`` or ``"mean"`` over a bag field's non-padding ids.
        param_dtype: dtype of the parameters (``jnp.float64`` with x64 enabled for exactness checks).
    """

    vocab_sizes: tuple[int, ...]
    spec: EmbeddingSpec
    slots: tuple[int, ...] | None = None
    pooling: str = "sum"
    param_dtype: Any = jnp.float32

    def _slots(self) -> tuple[int, ...]:
        return tuple(self.slots) if self.slots is not None else (1,) * len(self.vocab_sizes)

    def row_ids(self, ids_BxS: jax.Array) -> jax.Array:
        """Fused table rows of local per-field ids (padding -1 stays -1)."""
        off_S = jnp.asarray(np.repeat(field_offsets(self.vocab_sizes), self._slots()), jnp.int32)
        return jnp.where(ids_BxS >= 0, ids_BxS + off_S[None, :], -1)

    @nn.compact
    def __call__(self, ids_BxS: jax.Array, *, ids_are_rows: bool = False) -> jax.Array:
        """Look up, pool bags, and (for MLET) project.

        Args:
            ids_BxS: int ids, local per field (or fused table rows when ``ids_are_rows``); -1 marks bag padding.
            ids_are_rows: the ids already index rows of ``table`` (used by the row-sparse training step, which
                substitutes the batch's unique rows for the table).
        Returns:
            ``[B, F, d]`` embeddings.
        """
        spec, n_fields = self.spec, len(self.vocab_sizes)
        table = table_param(self, table_init(spec.table_init, self.vocab_sizes, spec.table_std),
                            (int(sum(self.vocab_sizes)), spec.width), self.param_dtype, ids_are_rows)
        rows_BxS = ids_BxS if ids_are_rows else self.row_ids(ids_BxS)
        slots = self._slots()
        if spec.kind == "mlet" and ids_are_rows:
            # Row-sparse step: `table` holds the batch's rows slot-major (slot s B + b is the row of ids[b, s];
            # mlet_jax.training._dedup_rows), so every slot belongs to one field. Projecting the slots first and
            # looking up d-wide afterwards gives the same numbers (pooling and projection are both linear) and
            # makes the backward's scatter of per-occurrence gradients into slots d-wide instead of k-wide.
            proj_FxKxD = self.param("projection", projection_init(spec.projection_init, spec.projection_std),
                                    (n_fields, spec.inner_dim, spec.dim), self.param_dtype)
            n_slots = ids_BxS.shape[1]
            if table.shape[0] != ids_BxS.shape[0] * n_slots:
                raise ValueError(f"ids_are_rows: expected the batch's {ids_BxS.shape[0]} x {n_slots} slot rows, "
                                 f"got a table of {table.shape[0]} rows")
            p_SxKxD = proj_FxKxD if all(s == 1 for s in slots) else proj_FxKxD[np.repeat(np.arange(n_fields), slots)]
            table = jnp.einsum("sbk,skd->sbd", table.reshape(n_slots, ids_BxS.shape[0], spec.inner_dim),
                               p_SxKxD).reshape(-1, spec.dim)
        elif spec.kind == "mlet" and all(s == 1 for s in slots):
            # Field-major [F, B, k] from the gather on: the per-field projection is then a batched matmul with the
            # batch dimension leading, and XLA inserts no [B, F, k] transposes (forward or backward); only the
            # k/d-times smaller [F, B, d] result is transposed.
            proj_FxKxD = self.param("projection", projection_init(spec.projection_init, spec.projection_std),
                                    (n_fields, spec.inner_dim, spec.dim), self.param_dtype)
            emb_FxBxK = jnp.take(table, rows_BxS.T, axis=0, mode="clip")
            return jnp.einsum("fbk,fkd->fbd", emb_FxBxK, proj_FxKxD).transpose(1, 0, 2)
        if all(s == 1 for s in slots):
            emb_BxFxW = jnp.take(table, rows_BxS, axis=0, mode="clip")
        else:
            mask_BxS = (rows_BxS >= 0).astype(table.dtype)
            vec_BxSxW = jnp.take(table, jnp.maximum(rows_BxS, 0), axis=0, mode="clip") * mask_BxS[..., None]
            pooled, col = [], 0
            for s in slots:
                v = vec_BxSxW[:, col:col + s].sum(axis=1)
                if self.pooling == "mean" and s > 1:
                    v = v / jnp.maximum(mask_BxS[:, col:col + s].sum(axis=1, keepdims=True), 1.0)
                pooled.append(v)
                col += s
            emb_BxFxW = jnp.stack(pooled, axis=1)
        if spec.kind == "single" or ids_are_rows:
            return emb_BxFxW
        proj_FxKxD = self.param("projection", projection_init(spec.projection_init, spec.projection_std),
                                (n_fields, spec.inner_dim, spec.dim), self.param_dtype)
        return jnp.einsum("bfk,fkd->bfd", emb_BxFxW, proj_FxKxD)


def collapse_table(table_NxK: jax.Array, projection_FxKxD: jax.Array, vocab_sizes: Sequence[int]) -> jax.Array:
    """Multiply each field's rows by its projection: ``[n_total, k] -> [n_total, d]``."""
    if table_NxK.shape[0] != sum(vocab_sizes):
        raise ValueError(f"table has {table_NxK.shape[0]} rows but vocab_sizes sum to {sum(vocab_sizes)}")
    out, lo = [], 0
    for f, n in enumerate(vocab_sizes):
        out.append(table_NxK[lo:lo + n] @ projection_FxKxD[f])
        lo += n
    return jnp.concatenate(out, axis=0)


def collapse(params: Mapping, vocab_sizes: Sequence[int]) -> dict:
    """Collapse every MLET embedding in a parameter tree into single-layer parameters.

    Any sub-dictionary holding both ``table`` and ``projection`` becomes ``{"table": table @ projection}``
    (per field); everything else is returned unchanged. Use with ``spec.collapsed()`` (see
    :func:`mlet_jax.models.collapse_model`).
    """
    if "table" in params and "projection" in params:
        rest = {k: v for k, v in params.items() if k not in ("table", "projection")}
        return {**rest, "table": collapse_table(params["table"], params["projection"], vocab_sizes)}
    return {k: collapse(v, vocab_sizes) if isinstance(v, Mapping) else v for k, v in params.items()}


def count_params(params) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))


def embedding_param_count(vocab_sizes: Sequence[int], spec: EmbeddingSpec) -> int:
    """Scalars in the embedding tables (training-time parameterization)."""
    n = int(sum(vocab_sizes))
    if spec.kind == "single":
        return n * spec.dim
    return n * spec.inner_dim + len(vocab_sizes) * spec.inner_dim * spec.dim
