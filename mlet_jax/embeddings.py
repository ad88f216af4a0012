"""Single-layer and MLET (multi-layer, factorized) embeddings for many categorical fields at once.

All fields live in one table with per-field row offsets, so a batch does a single gather:

* single-layer: ``table`` of shape ``[n_total, d]``; ``emb[b, f] = table[off_f + id[b, f]]``.
* MLET:         ``table`` of shape ``[n_total, k]`` and ``projection`` of shape ``[F, k, d]`` (one bias-free
  ``k -> d`` linear layer per field, as in the authors' code); ``emb[b, f] = table[off_f + id[b, f]] @ projection[f]``.

In the paper's column-major notation a field's ``table`` is ``W2^T`` (n x k) and its ``projection`` is ``W1^T``
(k x d), so ``table @ projection = (W1 W2)^T``. :func:`collapse` multiplies the factors out once when training ends;
the collapsed single-layer parameters give the same logits and cost nothing extra at inference.

:class:`EmbeddingStage` owns every table of a model (the embeddings and the width-1 first-order table), all indexed by
the batch's fused row ids (``offsets[field] + id``), and names them (:attr:`EmbeddingStage.table_paths`): the
row-sparse step (:mod:`mlet_jax.row_sparse`) and the sharding rules (:mod:`mlet_jax.distributed`) take the tables
from there, never from parameter names. Model bodies only see the stage's :class:`Features`.

References:
    Deng et al., "Enhancing cross-category learning in recommendation systems with multi-layer embedding
    training" (MLET), arXiv:2309.15881.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from mlet_jax import oov as oov_lib

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
        oov: what an id outside its field's vocabulary does (:mod:`mlet_jax.oov`): ``"error"`` (refused on the
            host, clipped into its own field inside jit; the tables are unchanged) or ``"row"`` (one extra row per
            field, its last, that every out-of-range id maps to).
    """

    kind: str = "single"
    dim: int = 16
    inner_dim: int | None = None
    table_init: str = "uniform"
    table_std: float = 1e-4
    projection_init: str = "normal"
    projection_std: float = 0.25
    oov: str = "error"

    def __post_init__(self):
        oov_lib.check_policy(self.oov)
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


def padded_rows(n_rows: int, multiple: int) -> int:
    """``n_rows`` rounded up to a multiple of ``multiple`` (tables split over ``multiple`` devices)."""
    return -(-int(n_rows) // int(multiple)) * int(multiple)


# Rows generated per loop iteration of a table's init: the counter-based generator's temporaries are this many rows,
# never the table (a single jax.random draw over [n, k] holds two table-sized uint32 buffers on CPU).
INIT_CHUNK_ROWS = 1 << 16


def _uniform_bits(key_data, rows_R: jax.Array, width: int, dtype) -> jax.Array:
    """U[-1, 1) values ``[R, width]`` that depend only on (key, row, column): threefry2x32 of the counter pair."""
    cols = jnp.arange(width, dtype=jnp.uint32)
    x1 = jnp.broadcast_to(rows_R.astype(jnp.uint32)[:, None], (rows_R.shape[0], width))
    x2 = jnp.broadcast_to(cols[None, :], (rows_R.shape[0], width))
    bits, _ = threefry2x32_p.bind(key_data[0], key_data[1], x1, x2)
    # 23 random mantissa bits under exponent 0: a float in [1, 2), then [0, 1) and [-1, 1)
    one_two = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32)
    return (2.0 * (one_two - 1.0) - 1.0).astype(dtype)


def _row_generated(key, shape, dtype, values_fn):
    """A ``[n_rows, width]`` array whose row ``r`` is ``values_fn(key_data, rows)[r]``, generated chunk by chunk.

    Values depend only on the key and the global row, so they are the same on one device and on a mesh: inside
    ``jax.set_mesh`` (how :class:`mlet_jax.training.Trainer` initializes on a mesh) each device generates only its
    own row block (``shard_map``), so no device ever holds the whole table and peak memory is the table itself.
    """
    n_rows, width = shape
    key_data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key

    def fill(kd, row0, n_local, axes=()):
        chunk = min(INIT_CHUNK_ROWS, n_local)
        out = jnp.zeros((n_local, width), dtype)
        if axes:  # inside shard_map every device's rows differ: mark the buffer and key as varying over the mesh
            out, kd = jax.lax.pcast(out, axes, to="varying"), jax.lax.pcast(kd, axes, to="varying")

        def body(c, out):
            start = jnp.minimum(c * chunk, n_local - chunk)  # the last chunk overlaps: it rewrites the same values
            rows = row0 + start + jnp.arange(chunk, dtype=jnp.int32)
            return jax.lax.dynamic_update_slice(out, values_fn(kd, rows).astype(dtype), (start, 0))

        return jax.lax.fori_loop(0, -(-n_local // chunk), body, out)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or n_rows % mesh.size:
        return fill(key_data, 0, n_rows)
    axes = tuple(mesh.axis_names)

    def local(kd):
        return fill(kd, jax.lax.axis_index(axes) * (n_rows // mesh.size), n_rows // mesh.size, axes)

    return jax.shard_map(local, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(),),
                         out_specs=jax.sharding.PartitionSpec(axes))(key_data)


def table_init(kind: str, vocab_sizes: Sequence[int], std: float = 1e-4):
    """A Flax initializer for a fused ``[n_rows, width]`` table with a per-field scale.

    ``"uniform"``: U(+-1/sqrt(n_field)); ``"xavier"``: U(+-sqrt(6 / (n_field + width))); ``"normal"``: N(0, std).
    Values come from a counter-based generator (threefry2x32 of (row, column) under the parameter key), written
    chunk by chunk, so initialization needs no memory beyond the table and gives the same numbers on any number of
    devices. ``n_rows`` may exceed ``sum(vocab_sizes)`` (tables padded to a multiple of the device count): the
    padding rows are zero and no id ever indexes them.
    """
    counts = np.asarray(vocab_sizes, np.int64)
    n = int(counts.sum())
    ends_F = np.cumsum(counts)

    def init(key, shape, dtype=jnp.float32):
        n_rows, width = shape
        if n_rows < n:
            raise ValueError(f"a table of {n_rows} rows cannot hold the {n} rows of vocab_sizes")
        if kind == "uniform":
            bound_F = 1.0 / np.sqrt(counts.astype(np.float64))
        elif kind == "xavier":  # torch xavier_uniform on a [n_field, width] weight
            bound_F = np.sqrt(6.0 / (counts + width))
        else:
            bound_F = np.full(len(counts), std)

        def values(kd, rows_R):
            u_RxW = _uniform_bits(kd, rows_R, width, jnp.float32)
            if kind == "normal":  # inverse-CDF normal from U(-1, 1), as jax.random.normal
                u_RxW = np.sqrt(2.0) * jax.lax.erf_inv(jnp.maximum(u_RxW, np.nextafter(np.float32(-1), 0)))
            # each row's field scale from an F-sized constant (a per-row [n] constant would bloat the HLO)
            field_R = jnp.searchsorted(jnp.asarray(ends_F, jnp.int32), rows_R, side="right")
            scale_R = jnp.where(rows_R < n, jnp.asarray(np.append(bound_F, 0.0), jnp.float32)[field_R], 0.0)
            return u_RxW * scale_R[:, None]

        return _row_generated(key, (n_rows, width), dtype, values)

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


def lookup_rows(table_NxW: jax.Array, rows_BxS: jax.Array, slots: Sequence[int], pooling: str) -> jax.Array:
    """``[B, F, W]``: row ``rows[b, s]`` of ``table`` per slot, bag fields pooled over their non-padding (-1) slots.

    The one lookup rule for full tables (``rows`` are fused table rows) and for the row-sparse step (``table`` holds
    the batch's gathered rows and ``rows`` point into them, :mod:`mlet_jax.row_sparse`).
    """
    if all(s == 1 for s in slots):
        return jnp.take(table_NxW, rows_BxS, axis=0, mode="clip")
    mask_BxS = (rows_BxS >= 0).astype(table_NxW.dtype)
    vec_BxSxW = jnp.take(table_NxW, jnp.maximum(rows_BxS, 0), axis=0, mode="clip") * mask_BxS[..., None]
    pooled, col = [], 0
    for s in slots:
        v = vec_BxSxW[:, col:col + s].sum(axis=1)
        if pooling == "mean" and s > 1:
            v = v / jnp.maximum(mask_BxS[:, col:col + s].sum(axis=1, keepdims=True), 1.0)
        pooled.append(v)
        col += s
    return jnp.stack(pooled, axis=1)


class Embeddings(nn.Module):
    """Embeddings of all categorical fields: ``ids [B, S] -> emb [B, F, d]``.

    Attributes:
        vocab_sizes: rows per field.
        spec: the parameterization (:class:`EmbeddingSpec`).
        slots: slots per field (a bag / multi-hot field takes several slots padded with -1); ``None``: one each.
        pooling: ``"sum"`` or ``"mean"`` over a bag field's non-padding ids.
        param_dtype: dtype of the parameters (``jnp.float64`` with x64 enabled for exactness checks).
        row_multiple: the table has ``sum(vocab_sizes)`` rows rounded up to a multiple of this (so that its rows
            split evenly over that many devices); padding rows are zero and never indexed.
    """

    vocab_sizes: tuple[int, ...]
    spec: EmbeddingSpec
    slots: tuple[int, ...] | None = None
    pooling: str = "sum"
    param_dtype: Any = jnp.float32
    row_multiple: int = 1

    def _slots(self) -> tuple[int, ...]:
        return tuple(self.slots) if self.slots is not None else (1,) * len(self.vocab_sizes)

    @property
    def table_sizes(self) -> tuple[int, ...]:
        """Rows of each field in the table: its vocabulary (plus its OOV row under ``spec.oov == "row"``)."""
        return oov_lib.table_sizes(self.vocab_sizes, self.spec.oov)

    @property
    def n_rows(self) -> int:
        """Rows of the stored table (padding included)."""
        return padded_rows(sum(self.table_sizes), self.row_multiple)

    def row_ids(self, ids_BxS: jax.Array) -> jax.Array:
        """Fused table rows of local per-field ids (bag padding -1 stays -1), under the spec's OOV policy: an id
        outside its field is clipped into it (``"error"``) or sent to the field's OOV row (``"row"``), never
        another field's row (:func:`mlet_jax.oov.device_rows`)."""
        return oov_lib.device_rows(ids_BxS, self.vocab_sizes, self._slots(), self.spec.oov)

    def _projection(self) -> jax.Array:
        spec = self.spec
        return self.param("projection", projection_init(spec.projection_init, spec.projection_std),
                          (len(self.vocab_sizes), spec.inner_dim, spec.dim), self.param_dtype)

    @nn.compact
    def __call__(self, ids_BxS: jax.Array) -> jax.Array:
        """Look up, pool bags, and (for MLET) project: ``[B, F, d]`` embeddings of local per-field ids."""
        spec, slots = self.spec, self._slots()
        table = self.param("table", table_init(spec.table_init, self.table_sizes, spec.table_std),
                           (self.n_rows, spec.width), self.param_dtype)
        rows_BxS = self.row_ids(ids_BxS)
        if spec.kind == "mlet" and all(s == 1 for s in slots):
            # Field-major [F, B, k] from the gather on: the per-field projection is then a batched matmul with the
            # batch dimension leading, and XLA inserts no [B, F, k] transposes (forward or backward); only the
            # k/d-times smaller [F, B, d] result is transposed.
            emb_FxBxK = jnp.take(table, rows_BxS.T, axis=0, mode="clip")
            return jnp.einsum("fbk,fkd->fbd", emb_FxBxK, self._projection()).transpose(1, 0, 2)
        emb_BxFxW = lookup_rows(table, rows_BxS, slots, self.pooling)
        if spec.kind == "single":
            return emb_BxFxW
        return jnp.einsum("bfk,fkd->bfd", emb_BxFxW, self._projection())

    def lookup_slots(self, params: Mapping, slot_rows_UxW: jax.Array, slot_BxS: jax.Array,
                     tile_field_T=None) -> jax.Array:
        """The same ``[B, F, d]`` embeddings from the batch's gathered rows (the row-sparse step).

        ``slot_rows_UxW`` holds the batch's gathered rows in tiles of equal size, every tile's rows of one field, and
        ``slot_BxS`` points each occurrence at one gathered row holding its row (-1 for padding). By default the
        rows are the batch's slots, slot-major (slot ``s B + b`` is the row of ``ids[b, s]``, a tile per id slot,
        :func:`mlet_jax.row_sparse.dedup_rows`); ``tile_field_T`` (``[T]`` ints) instead names the field of each of
        ``T`` tiles (the batch's distinct rows grouped by field, :func:`mlet_jax.row_sparse.compact_rows`).
        MLET projects the gathered rows first (:meth:`project_rows`), each with its field's projection, and looks
        occurrences up d-wide: pooling and projection are both linear, and the backward's scatter into the rows is
        d-wide instead of k-wide. ``params`` is this module's parameter dictionary (MLET reads its ``projection``;
        ``table`` is not read).
        """
        return lookup_rows(self.project_rows(params, slot_rows_UxW, slot_BxS, tile_field_T), slot_BxS, self._slots(),
                           self.pooling)

    def project_rows(self, params: Mapping, slot_rows_UxW: jax.Array, slot_BxS: jax.Array,
                     tile_field_T=None) -> jax.Array:
        """The gathered rows as :meth:`lookup_slots` looks occurrences up in them: ``[U, d]``. MLET multiplies each
        row by its field's projection (``[U, k] -> [U, d]``, tiles as in :meth:`lookup_slots`); single-layer rows are
        returned as they are. ``slot_BxS`` is the whole batch's (it gives the per-slot tiling when ``tile_field_T``
        is ``None``); a lookup may then read the projected rows for any subset of the batch's samples."""
        spec, slots = self.spec, self._slots()
        if spec.kind != "mlet":
            return slot_rows_UxW
        proj_FxKxD = params["projection"]
        if tile_field_T is None:
            n_b, n_slots = slot_BxS.shape
            if slot_rows_UxW.shape[0] != n_b * n_slots:
                raise ValueError(f"expected the batch's {n_b} x {n_slots} slot rows, got {slot_rows_UxW.shape[0]}")
            tile_field_T = np.repeat(np.arange(len(slots)), slots)
        n_tiles = tile_field_T.shape[0]
        if slot_rows_UxW.shape[0] % n_tiles:
            raise ValueError(f"{slot_rows_UxW.shape[0]} gathered rows do not split into {n_tiles} tiles")
        if isinstance(tile_field_T, np.ndarray) and np.array_equal(tile_field_T, np.arange(len(slots))):
            p_TxKxD = proj_FxKxD  # one slot per field: no gather of the projections
        else:
            p_TxKxD = proj_FxKxD[tile_field_T]
        return jnp.einsum("tbk,tkd->tbd", slot_rows_UxW.reshape(n_tiles, -1, spec.inner_dim),
                          p_TxKxD).reshape(-1, spec.dim)


class FirstOrder(nn.Module):
    """First-order (wide) part without its bias: ``sum_f w[id_f] + dense @ w_dense``, ``-> [B]``.

    The id weights are an un-factorized width-1 table over the same fused rows as the embeddings (leaf
    ``embeddings/table``); MLET never factorizes it, as in the authors' code. Bag fields pool their weights like the
    embeddings do. ``dense`` weights exist only when ``num_dense > 0``. DeepCTR-Torch initializes both N(0, 1e-4)
    (``table_init="normal"``, ``std=1e-4``); ``table_init="uniform"`` gives U(+-1/sqrt(n_field)) to the table.
    """

    vocab_sizes: tuple[int, ...]
    num_dense: int
    slots: tuple[int, ...] | None = None
    pooling: str = "sum"
    table_init: str = "normal"
    std: float = 1e-4
    param_dtype: Any = jnp.float32
    row_multiple: int = 1
    oov: str = "error"

    def table_module(self, **kw) -> Embeddings:
        spec = EmbeddingSpec(kind="single", dim=1, table_init=self.table_init, table_std=self.std, oov=self.oov)
        return Embeddings(self.vocab_sizes, spec, self.slots, self.pooling, self.param_dtype, self.row_multiple,
                          name="embeddings", **kw)

    def _dense(self, logit_B: jax.Array, dense_BxM: jax.Array, w_M=None) -> jax.Array:
        if not self.num_dense:
            return logit_B
        if w_M is None:
            w_M = self.param("dense", nn.initializers.normal(self.std), (self.num_dense,), self.param_dtype)
        return logit_B + dense_BxM.astype(self.param_dtype) @ w_M

    @nn.compact
    def __call__(self, dense_BxM: jax.Array, ids_BxS: jax.Array) -> jax.Array:
        return self._dense(self.table_module()(ids_BxS).sum(axis=(1, 2)), dense_BxM)

    def lookup_slots(self, params: Mapping, slot_rows_Ux1: jax.Array, slot_BxS: jax.Array, dense_BxM,
                     tile_field_T=None) -> jax.Array:
        """The same ``[B]`` first-order terms from the batch's gathered rows (see :meth:`Embeddings.lookup_slots`;
        the width-1 table is never projected, so ``tile_field_T`` is not needed)."""
        w_BxFx1 = self.table_module(parent=None).lookup_slots({}, slot_rows_Ux1, slot_BxS)
        return self._dense(w_BxFx1.sum(axis=(1, 2)), dense_BxM, params.get("dense"))


class Features(NamedTuple):
    """What the embedding stage hands a model body.

    Attributes:
        emb_BxFxD: the embeddings of every categorical field.
        first_B: the first-order term ``sum_f w[id_f] + dense @ w_dense`` (no bias), or ``None`` for models
            without a first-order part.
    """

    emb_BxFxD: jax.Array
    first_B: jax.Array | None = None


class EmbeddingStage(nn.Module):
    """Every table of a model: the embeddings (single-layer or MLET, bags included) and the first-order weights.

    ``(dense [B, M], ids [B, S]) -> Features``. Parameters sit under ``embeddings`` (``table``, and ``projection`` for
    MLET) and, with a first-order part, under ``linear`` (``embeddings/table`` of width 1 and ``dense``), in the
    scope of the model that owns the stage (:class:`mlet_jax.models.base.CTRModel`). Model bodies see only the
    :class:`Features`; how the tables are updated (densely or row-sparse, :mod:`mlet_jax.row_sparse`) is decided
    outside the model from :attr:`table_paths` and :meth:`lookup_slots`.
    """

    vocab_sizes: tuple[int, ...]
    spec: EmbeddingSpec
    num_dense: int = 0
    slots: tuple[int, ...] | None = None
    pooling: str = "sum"
    first_order: bool = False
    first_order_init: str = "normal"
    first_order_std: float = 1e-4
    param_dtype: Any = jnp.float32
    row_multiple: int = 1

    # ``parent=None`` builds a free-standing definition (for pure methods outside ``init``/``apply``)
    def embeddings(self, **kw) -> Embeddings:
        return Embeddings(self.vocab_sizes, self.spec, self.slots, self.pooling, self.param_dtype, self.row_multiple,
                          name="embeddings", **kw)

    def linear(self, **kw) -> FirstOrder:
        return FirstOrder(self.vocab_sizes, self.num_dense, self.slots, self.pooling, self.first_order_init,
                          self.first_order_std, self.param_dtype, self.row_multiple, name="linear",
                          oov=self.spec.oov, **kw)

    @property
    def table_paths(self) -> tuple[tuple[str, ...], ...]:
        """Paths of the row tables in the parameter tree (all indexed by the same fused rows)."""
        return (("embeddings", "table"),) + ((("linear", "embeddings", "table"),) if self.first_order else ())

    @property
    def table_sizes(self) -> tuple[int, ...]:
        """Rows of each field in every table (the vocabulary, plus the OOV row under ``spec.oov == "row"``)."""
        return oov_lib.table_sizes(self.vocab_sizes, self.spec.oov)

    @property
    def n_rows(self) -> int:
        """Rows of every table (padding included)."""
        return padded_rows(sum(self.table_sizes), self.row_multiple)

    def row_ids(self, ids_BxS: jax.Array) -> jax.Array:
        """Fused table rows of local per-field ids (padding -1 stays -1; see :meth:`Embeddings.row_ids`)."""
        return self.embeddings(parent=None).row_ids(ids_BxS)

    def check_ids(self, ids_BxS, field_names=None, what: str = "ids") -> np.ndarray:
        """A host batch's ids checked under the OOV policy and made int32 (:func:`mlet_jax.oov.check_ids`)."""
        return oov_lib.check_ids(ids_BxS, self.vocab_sizes, self.slots, self.spec.oov, field_names, what)

    @nn.compact
    def __call__(self, dense_BxM: jax.Array, ids_BxS: jax.Array) -> Features:
        emb_BxFxD = self.embeddings()(ids_BxS)
        return Features(emb_BxFxD, self.linear()(dense_BxM, ids_BxS) if self.first_order else None)

    def lookup_slots(self, params: Mapping, slot_rows: Mapping[tuple[str, ...], jax.Array], slot_BxS: jax.Array,
                     dense_BxM: jax.Array, tile_field_T=None) -> Features:
        """The same :class:`Features` from the batch's gathered rows ``slot_rows[path]`` of each table.

        ``params`` is the model's parameter tree (the stage reads its non-table parameters: MLET projections and the
        first-order dense weights); ``slot_BxS`` and ``tile_field_T`` as in :meth:`Embeddings.lookup_slots`. The
        same as :meth:`lookup_projected` of :meth:`project_rows`.
        """
        return self.lookup_projected(params, self.project_rows(params, slot_rows, slot_BxS, tile_field_T), slot_BxS,
                                     dense_BxM)

    def project_rows(self, params: Mapping, slot_rows: Mapping[tuple[str, ...], jax.Array], slot_BxS: jax.Array,
                     tile_field_T=None) -> dict:
        """The per-row part of :meth:`lookup_slots`: ``slot_rows`` with the embedding rows projected
        (:meth:`Embeddings.project_rows`; the first-order rows are never projected). Done once per batch; then
        :meth:`lookup_projected` may read the rows for the whole batch or for any chunk of its samples."""
        emb = ("embeddings", "table")
        return {**slot_rows, emb: self.embeddings(parent=None).project_rows(params.get("embeddings", {}),
                                                                          slot_rows[emb], slot_BxS, tile_field_T)}

    def lookup_projected(self, params: Mapping, rows: Mapping[tuple[str, ...], jax.Array], slot_BxS: jax.Array,
                         dense_BxM: jax.Array) -> Features:
        """The per-sample part of :meth:`lookup_slots`: :class:`Features` of the samples of ``slot_BxS`` (and
        ``dense_BxM``) from :meth:`project_rows`'s rows."""
        emb = lookup_rows(rows[("embeddings", "table")], slot_BxS, self.embeddings(parent=None)._slots(), self.pooling)
        if not self.first_order:
            return Features(emb)
        rows_Ux1 = rows[("linear", "embeddings", "table")]
        first = self.linear(parent=None).lookup_slots(params.get("linear", {}), rows_Ux1, slot_BxS, dense_BxM)
        return Features(emb, first)


def collapse_table(table_NxK: jax.Array, projection_FxKxD: jax.Array, vocab_sizes: Sequence[int]) -> jax.Array:
    """Multiply each field's rows by its projection: ``[n_total, k] -> [n_total, d]``."""
    if table_NxK.shape[0] < sum(vocab_sizes):
        raise ValueError(f"table has {table_NxK.shape[0]} rows but vocab_sizes sum to {sum(vocab_sizes)}")
    out, lo = [], 0
    for f, n in enumerate(vocab_sizes):
        out.append(table_NxK[lo:lo + n] @ projection_FxKxD[f])
        lo += n
    if lo < table_NxK.shape[0]:  # device padding rows (never indexed) stay zero rows
        out.append(jnp.zeros((table_NxK.shape[0] - lo, projection_FxKxD.shape[-1]), out[0].dtype))
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
    n = int(sum(oov_lib.table_sizes(vocab_sizes, spec.oov)))
    if spec.kind == "single":
        return n * spec.dim
    return n * spec.inner_dim + len(vocab_sizes) * spec.inner_dim * spec.dim
