"""Row-sparse table updates: only the rows a batch touches are gathered, differentiated and updated.

One step (:func:`value_and_grad` then :meth:`RowSparse.update` per table):

1. :func:`dedup_rows`: the batch's fused row ids ``[B, S]`` become ``U = B S`` slots, slot-major (slot ``s B + b``
   holds the row of occurrence ``(b, s)``), and every occurrence points at one slot holding its row;
2. :func:`compact_rows`: the slots that hold a row's first occurrence are packed, grouped by field, into a fixed
   capacity of ``C`` rows (:data:`COMPACT_FRACTION` of the slots, or a little more than the first batch's distinct
   rows); a batch with more distinct rows than that packs the rest into spill chunks after them
   (:func:`spill_plan`), which loops with a dynamic trip count gather, project and update (none for a batch that
   fits: no ``lax.cond`` and no array padded to the slots, whose copies cost a tenth of an MLET step);
3. each table's distinct rows are gathered (``[C, width]``) once, each row projected once with its field's
   projection (MLET), and every occurrence is looked up d-wide from them
   (:meth:`mlet_jax.embeddings.EmbeddingStage.lookup_slots`); the model body runs on the features, and
   ``jax.grad`` gives the gradient with respect to the gathered rows. A batch run in chunks of samples
   (``TrainConfig.chunk_samples``) projects the rows once and looks each chunk's occurrences up in them, adding
   the chunk's row gradient into one carried ``[C, d]`` array (:func:`lookup_body_value_and_grad`);
4. :class:`RowSparse` applies torch's SGD or Adagrad to those rows only.

For SGD without momentum and for Adagrad, without weight decay, this equals the dense update exactly: a row with a
zero gradient does not move and its accumulator does not change (tests check 20 steps against the dense path, bags
and repeats included). Cost grows with the batch, not with the table.

SGD with weight decay ``wd`` moves every row every step, ``w <- (1 - lr wd) w - lr g``, but an untouched row only
shrinks: after ``k`` steps without a gradient it is ``(1 - lr wd)^k w``. So each table keeps the step its rows are
current at (``RowSparseState.last``) and a touched row is first brought up to date with that closed form; the
table is current everywhere only after :meth:`RowSparse.materialize` (``Trainer.sync``: ``fit`` runs it before every
evaluation and checkpoint and at the end). Adagrad's weight decay feeds the accumulator of untouched rows, which has
no closed form, so it is refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mlet_jax.optim import OptimizerSpec, _decayed_lr

Path = tuple[str, ...]

# Up to this many table rows the row-sparse state carries a table-sized int32 dedup scratch, and the step finds each
# batch row's slot by a scatter and a gather of O(B S) entries; above it, through a sort.
SCATTER_DEDUP_MAX_ROWS = 1 << 23

# Distinct rows the compact step holds, as a fraction of the batch's B S slots (tile padding included). A Criteo-shaped
# batch of 1024 has ~23% distinct rows of its 26,624 slots, the synthetic default ~32% of 8,192; a batch with more
# spills the rest into chunks after the capacity (exactly), so the capacity only decides speed. Only used when it is
# smaller than the slots and than the most distinct rows the vocabularies allow; 0 turns compaction off (the per-slot
# step).
COMPACT_FRACTION = 0.5
# MLET projects distinct rows in tiles of this many rows (at most B / 8), each tile of one field: a field wastes less
# than a tile of padding, and a tile's projection is one [tile, k] x [k, d] matmul.
COMPACT_TILE = 64
# A batch with more distinct rows than the compact capacity C gathers, projects and updates the rest in spill chunks
# of C / SPILL_CHUNKS rows, in loops whose trip count is the chunks it fills (0 for a batch that fits): an
# overflowing batch costs about its extra rows, and a fitting one nothing (no lax.cond, no padding to the slots).
SPILL_CHUNKS = 8


class RowSparseState(NamedTuple):
    count: chex.Array
    sum: Any  # Adagrad accumulator with the table's shape, or None for SGD
    last: Any = None  # SGD with weight decay: int32 [N], the step each row is current at (lazy decay); else None


@dataclasses.dataclass(frozen=True)
class RowSparse:
    """Apply SGD or torch Adagrad to only the rows a batch touched.

    ``rows`` may contain repeats as long as every repeat but one has a zero gradient: updates are scatter-*added*, so
    zero-gradient repeats add nothing.
    """

    spec: OptimizerSpec

    def __post_init__(self):
        if not self.spec.supports_row_sparse:
            raise ValueError("row-sparse updates equal dense ones only without momentum, and without weight decay "
                             "except SGD's; use dense updates for this optimizer")

    @property
    def lazy_decay(self) -> bool:
        """SGD with weight decay: untouched rows decay lazily (see the module docstring)."""
        return self.spec.name == "sgd" and self.spec.weight_decay != 0

    def init(self, table: jax.Array) -> RowSparseState:
        acc = (jnp.full_like(table, self.spec.initial_accumulator_value) if self.spec.name == "adagrad" else None)
        last = jnp.zeros(table.shape[:1], jnp.int32) if self.lazy_decay else None
        return RowSparseState(count=jnp.zeros([], jnp.int32), sum=acc, last=last)

    def _decay(self, steps, dtype):
        """``(1 - lr wd)^steps`` per row: the closed form of ``steps`` SGD steps without a gradient."""
        a = jnp.asarray(1.0 - self.spec.lr * self.spec.weight_decay, dtype)
        return jnp.power(a, steps.astype(dtype))[:, None]

    def catch_up(self, table: jax.Array, state: RowSparseState, rows) -> tuple[jax.Array, RowSparseState]:
        """The batch's rows brought up to the steps taken (``state.count``) before the forward pass reads them;
        ``rows`` may repeat and hold -1 padding (skipped). A no-op without lazy decay.

        Repeats compute the same value from the same row, so ``set`` is exact; :meth:`update` then decays each
        touched row by one step with its gradient step.
        """
        if not self.lazy_decay:
            return table, state
        rows = jnp.asarray(rows).reshape(-1)
        safe = jnp.where(rows >= 0, rows, 0)
        caught_up = table[safe] * self._decay(state.count - state.last[safe], table.dtype)
        target = jnp.where(rows >= 0, rows, table.shape[0])  # padding writes nowhere
        table = table.at[target].set(caught_up, mode="drop")
        return table, state._replace(last=state.last.at[target].set(state.count, mode="drop"))

    def materialize(self, table: jax.Array, state: RowSparseState) -> tuple[jax.Array, RowSparseState]:
        """Every row brought up to the current step (a no-op without lazy decay): what the dense update holds."""
        if not self.lazy_decay:
            return table, state
        table = table * self._decay(state.count - state.last, table.dtype)
        return table, state._replace(last=jnp.full_like(state.last, state.count))

    def update(self, table: jax.Array, state: RowSparseState, rows_U, grad_UxW: jax.Array,
               spilled: Callable | None = None):
        """Return the updated ``(table, state)``.

        ``rows_U`` is an int array of table rows, or a :class:`CompactRows` whose first ``capacity`` rows take
        ``grad_UxW`` (``[capacity, W]``) and whose ``n_spilled`` spill chunks (``spill`` rows each) take
        ``spilled(i)`` (``[spill, W]``, the gradient of spill chunk ``i``: :meth:`SparseGrads.spilled_rows`), in a
        loop with a dynamic trip count that updates the table in place (a ``lax.cond`` around the update made XLA
        copy the whole table and accumulator). Splitting is exact because a row's repeats carry zero gradient, and
        a zero gradient moves neither the row nor its accumulator.
        """
        count = state.count + 1
        if not isinstance(rows_U, CompactRows):
            table, acc, last = self._apply(table, state.sum, state.last, count, rows_U, grad_UxW)
            return table, RowSparseState(count, acc, last)
        c = rows_U.capacity
        carry = self._apply(table, state.sum, state.last, count, rows_U.rows[:c], grad_UxW)
        if spilled is not None:
            def chunk(i, carry):
                r_R = jax.lax.dynamic_slice_in_dim(rows_U.rows, c + i * rows_U.spill, rows_U.spill)
                return self._apply(*carry, count, r_R, spilled(i))

            carry = jax.lax.fori_loop(0, rows_U.n_spilled, chunk, carry)
        table, acc, last = carry
        return table, RowSparseState(count, acc, last)

    def _apply(self, table, acc, last, count, rows_U, grad_UxW):
        s = self.spec
        if s.name == "sgd":
            if self.lazy_decay:
                # Catch up first: (1 - lr wd)^(count - last) w, then the gradient step. A repeat (zero gradient)
                # computes the same caught-up value from the same row, and a row already current decays by
                # (1 - lr wd)^0 = 1, so repeats and later chunks change nothing: set, not add, is exact here.
                caught_up = table[rows_U] * self._decay(count - last[rows_U], table.dtype)
                table, last = table.at[rows_U].set(caught_up), last.at[rows_U].set(count)
            return table.at[rows_U].add(-s.lr * grad_UxW), None, last
        clr = _decayed_lr(s.lr, s.lr_decay, count, table.dtype)
        acc = acc.at[rows_U].add(grad_UxW * grad_UxW)
        step = -clr * (grad_UxW / (jnp.sqrt(acc[rows_U]) + s.eps))
        return table.at[rows_U].add(step.astype(table.dtype)), acc, last


def dedup_rows(rows_BxS: jax.Array, scratch_N: jax.Array | None = None):
    """Slots for the row-sparse step: ``(rows_U, slot_BxS, scratch_N)`` with ``U = B S``, slot-major.

    Slot ``s B + b`` holds the row of occurrence ``(b, s)`` (``rows_U = rows_BxS.T.reshape(-1)``, padding as row 0),
    so slot ``u`` belongs to id slot ``u // B`` and hence to one field: an MLET table can project the gathered slots
    before the per-occurrence lookup. ``slot_BxS`` (-1 for padding) points every occurrence at one slot holding its
    row, the same for all occurrences of a row, so gradients of repeated ids sum into that slot; the other slots
    repeat a row with a zero gradient, which :class:`RowSparse` adds as nothing.

    XLA's CPU sort (``jnp.unique``) cost a sixth of a DeepFM step at batch 1024 (26,624 ids). Given a table-sized
    int32 ``scratch_N`` (the train state holds one for tables up to :data:`SCATTER_DEDUP_MAX_ROWS` rows), every
    occurrence instead writes its slot number into it at its row and reads back whichever slot landed there (any
    one occurrence's: all of them hold the row). Only the batch's rows are written and read, so the scratch never
    needs clearing: the state carries it from step to step (donated, updated in place). Without one,
    ``jnp.unique`` groups equal rows and a ``U``-sized scatter-min picks each group's first slot; ``scratch_N`` is
    then returned as ``None``.
    """
    flat = rows_BxS.T.reshape(-1)
    valid = flat >= 0
    safe = jnp.where(valid, flat, 0)
    occ = jnp.arange(flat.size, dtype=jnp.int32)
    if scratch_N is None:
        _, group = jnp.unique(safe, size=flat.size, fill_value=0, return_inverse=True)
        group = group.reshape(-1)
        first_U = jnp.full((flat.size,), flat.size, jnp.int32).at[group].min(jnp.where(valid, occ, flat.size),
                                                                            mode="promise_in_bounds")
        slot = first_U.at[group].get(mode="promise_in_bounds")
    else:
        # padding writes nowhere (an out-of-range index is dropped): its slot must not stand for row 0 of field 0
        scratch_N = scratch_N.at[jnp.where(valid, flat, scratch_N.shape[0])].set(occ, mode="drop")
        slot = scratch_N.at[safe].get(mode="promise_in_bounds")
    slot_BxS = jnp.where(valid, slot, -1).reshape(rows_BxS.shape[::-1]).T
    return safe, slot_BxS, scratch_N


class CompactRows(NamedTuple):
    """Table rows of a compact step: ``rows[:capacity]`` hold the batch's first distinct rows, and the
    ``n_spilled`` spill chunks of ``spill`` rows after them hold the rest of a batch that has more (padding: row 0
    with a zero gradient). ``n_spilled`` counts the chunks this batch fills (0 when it fits the capacity; at most
    :func:`spill_plan`'s ``n_spill``)."""

    rows: jax.Array
    capacity: int
    spill: int
    n_spilled: jax.Array


class Compact(NamedTuple):
    """The batch's distinct rows packed by :func:`compact_rows`."""

    rows_C: jax.Array        # [C] table row of each packed row (padding: row 0)
    ref_BxS: jax.Array       # [B, S] packed row of each occurrence (-1 for padding)
    tile_field_T: jax.Array  # [C / tile] field of each tile of packed rows
    fits: jax.Array          # whether every distinct row fit (else rows_C and ref_BxS are incomplete)
    n_tiles: jax.Array       # tiles the batch's distinct rows fill (more than C / tile when they do not fit)


def compact_tile(n_batch: int, tiled: bool) -> int:
    """Rows per tile of the compact step for a batch of ``n_batch`` (1 unless MLET projects tiles)."""
    return max(1, min(COMPACT_TILE, n_batch // 8)) if tiled else 1


def _most_tiles(vocab_sizes, slots, n_batch: int, tile: int) -> int:
    """The most tiles a ``[n_batch, S]`` batch's distinct rows can fill: field ``f`` has at most
    ``min(vocab_f, n_batch slots_f)`` distinct rows, in tiles of its own."""
    most_F = np.minimum(np.asarray(vocab_sizes, np.int64), n_batch * np.asarray(slots, np.int64))
    return int((-(-most_F // tile)).sum())


def compact_plan(vocab_sizes, slots, n_batch: int, tiled: bool,
                 capacity_tiles: int | None = None) -> tuple[int, int, bool] | None:
    """``(tile, capacity_tiles, may_overflow)`` of the compact step for a ``[n_batch, S]`` batch, or ``None`` when
    the capacity would not be smaller than the batch's slots. The capacity is :data:`COMPACT_FRACTION` of the slots,
    or ``capacity_tiles`` when given and smaller (:func:`batch_tiles` of a typical batch with some headroom), and
    at most the tiles the vocabularies can fill (field ``f`` has at most ``min(vocab_f, n_batch slots_f)`` distinct
    rows); at that bound no batch can overflow it (a batch that does overflow it spills, :func:`spill_plan`)."""
    if COMPACT_FRACTION <= 0:
        return None
    slots = tuple(slots) if slots is not None else (1,) * len(vocab_sizes)
    n_slots = n_batch * sum(slots)
    tile = compact_tile(n_batch, tiled)
    bound = _most_tiles(vocab_sizes, slots, n_batch, tile)
    capacity = min(bound, -(-int(COMPACT_FRACTION * n_slots) // tile))
    if capacity_tiles is not None:
        capacity = max(1, min(capacity, int(capacity_tiles)))
    return None if capacity * tile >= n_slots else (tile, capacity, capacity < bound)


def spill_plan(vocab_sizes, slots, n_batch: int, tile: int, capacity_tiles: int) -> tuple[int, int]:
    """``(spill_tiles, n_spill)``: a batch with more distinct rows than the compact step's capacity handles the rest
    in up to ``n_spill`` spill chunks of ``spill_tiles`` tiles each (1 / :data:`SPILL_CHUNKS` of the capacity),
    enough for the most rows the vocabularies allow."""
    slots = tuple(slots) if slots is not None else (1,) * len(vocab_sizes)
    spill_tiles = max(1, -(-capacity_tiles // SPILL_CHUNKS))
    over = max(0, _most_tiles(vocab_sizes, slots, n_batch, tile) - capacity_tiles)
    return spill_tiles, -(-over // spill_tiles)


def batch_tiles(rows_BxS, table_sizes, tile: int) -> int:
    """Tiles of ``tile`` rows that one batch's distinct rows fill in the compact step (each field's rows in tiles of
    their own), from its fused table rows ``[B, S]`` (-1: bag padding), on the host."""
    rows = np.asarray(rows_BxS).reshape(-1)
    distinct = np.unique(rows[rows >= 0])
    per_field = np.bincount(np.searchsorted(np.cumsum(table_sizes), distinct, side="right"),
                            minlength=len(table_sizes))
    return int((-(-per_field // tile)).sum())


def capacity_for(rows_BxS, table_sizes, tile: int, headroom: float) -> int:
    """The compact step's capacity in tiles for batches like this one: ``headroom`` times its :func:`batch_tiles`,
    rounded up (what ``TrainConfig.compact_headroom`` takes from the first batch)."""
    return math.ceil(headroom * batch_tiles(rows_BxS, table_sizes, tile))


def compact_rows(rows_U: jax.Array, slot_BxS: jax.Array, slots, tile: int, capacity_tiles: int) -> Compact:
    """Pack the batch's distinct rows (from :func:`dedup_rows`), grouped by field, into ``capacity_tiles`` tiles.

    A slot holds a distinct row's representative when every occurrence of that row points at it (``slot == own
    index``); slot-major order puts field ``f``'s slots in one range, so a cumulative sum over the representatives
    ranks them within their field, and field ``f`` starts at the first tile after field ``f - 1``'s
    ``ceil(n_f / tile)`` tiles. Every shape is static; ``fits`` says whether the batch's tiles fit the capacity.
    """
    n_b, n_s = slot_BxS.shape
    n_f, cap = len(slots), capacity_tiles * tile
    field_S = np.repeat(np.arange(n_f), slots)
    slot_U = slot_BxS.T.reshape(-1)
    is_rep_U = slot_U == jnp.arange(slot_U.size, dtype=slot_U.dtype)
    rep_i = is_rep_U.astype(jnp.int32)
    before_U = jnp.cumsum(rep_i) - rep_i  # representatives before each slot
    cnt_F = jnp.zeros((n_f,), jnp.int32).at[field_S].add(rep_i.reshape(n_s, n_b).sum(axis=1))
    tiles_F = -(-cnt_F // tile)
    tile_end_F = jnp.cumsum(tiles_F)
    first_F = jnp.cumsum(cnt_F) - cnt_F  # representatives of the fields before f
    field_U = jnp.asarray(np.repeat(field_S, n_b), jnp.int32)
    pos_U = (tile_end_F - tiles_F)[field_U] * tile + before_U - first_F[field_U]
    pos_U = jnp.where(is_rep_U, pos_U, cap)  # anything but a representative writes nowhere
    rows_C = jnp.zeros((cap,), rows_U.dtype).at[pos_U].set(rows_U, mode="drop")
    ref_BxS = jnp.where(slot_BxS >= 0, pos_U.at[jnp.maximum(slot_BxS, 0)].get(mode="promise_in_bounds"), -1)
    tile_field_T = jnp.minimum(jnp.searchsorted(tile_end_F, jnp.arange(capacity_tiles), side="right"), n_f - 1)
    return Compact(rows_C, ref_BxS, tile_field_T.astype(jnp.int32), tile_end_F[-1] <= capacity_tiles,
                   tile_end_F[-1])


def split_tables(params: Mapping, table_paths) -> tuple[dict[Path, jax.Array], dict[Path, jax.Array]]:
    """``(tables, rest)`` as flat ``{path: array}`` dicts, the tables being the leaves at ``table_paths``."""
    flat = traverse_util.flatten_dict(params)
    missing = [p for p in table_paths if p not in flat]
    if missing:
        raise KeyError(f"no table at {['/'.join(p) for p in missing]} in the parameters")
    tables = {p: flat[p] for p in table_paths}
    return tables, {k: v for k, v in flat.items() if k not in tables}


class SparseGrads(NamedTuple):
    """What :func:`value_and_grad` returns besides the loss."""

    rest: dict          # flat {path: gradient} of every non-table parameter
    rows: dict          # {table path: [R, width] gradient of the gathered rows (a CompactRows' first capacity)}
    rows_U: Any         # the table row of each gathered row: [R] ints or a CompactRows (RowSparse.update takes both)
    scratch_N: Any      # the updated dedup scratch (or None)
    spilled: Callable | None = None  # i -> {table path: [spill, width] gradient of spill chunk i}, or None
    tables: dict | None = None  # {table path: table} to update (the step's last reads of them done), or None: params'

    def spilled_rows(self, path) -> Callable | None:
        """``i -> [spill, width]``: table ``path``'s gradient of spill chunk ``i`` (:meth:`RowSparse.update`'s
        ``spilled``), or ``None`` without spill chunks."""
        return None if self.spilled is None else (lambda i: self.spilled(i)[path])

    def rows_sq_norm(self) -> jax.Array:
        """The squared norm of every table row gradient, spill chunks included."""
        sq = sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in self.rows.values())
        if self.spilled is None:
            return jnp.asarray(sq, jnp.float32)
        return jax.lax.fori_loop(0, self.rows_U.n_spilled, lambda i, a: a + sum(
            jnp.sum(jnp.square(g.astype(jnp.float32))) for g in self.spilled(i).values()), jnp.asarray(sq, jnp.float32))

    def table_grads(self, tables: Mapping) -> dict:
        """``{path: table-shaped gradient}``: every row gradient summed into its table's shape (for checks)."""
        rows = self.rows_U.rows if isinstance(self.rows_U, CompactRows) else self.rows_U
        n = self.rows_U.capacity if isinstance(self.rows_U, CompactRows) else rows.shape[0]
        full = {p: jnp.zeros_like(t).at[rows[:n]].add(self.rows[p]) for p, t in tables.items()}
        if self.spilled is None:
            return full
        c, r = self.rows_U.capacity, self.rows_U.spill
        return jax.lax.fori_loop(0, self.rows_U.n_spilled, lambda i, f: {
            p: f[p].at[jax.lax.dynamic_slice_in_dim(rows, c + i * r, r)].add(g) for p, g in self.spilled(i).items()},
            full)


def _per_sample(batch: Mapping, n_b: int) -> dict:
    """The batch's arrays with one entry per sample (leading dimension ``n_b``): what a chunk of samples slices."""
    return {k: v for k, v in batch.items() if np.ndim(v) >= 1 and np.shape(v)[0] == n_b}


def body_value_and_grad(model, loss_fn: Callable, rest: Mapping, features, batch: Mapping, chunk: int | None,
                        rngs: Mapping | None = None, train: bool = False):
    """``(loss, g_rest, g_features)``: the model body and the loss over the batch, ``chunk`` samples at a time.

    The per-sample part of a step (the model body on the features: interaction, MLPs, heads; then the loss) runs
    as a ``lax.scan`` over ``B // chunk`` chunks of ``chunk`` samples, then once on the ``B % chunk`` samples left
    (if any), with the loss and the gradients of the non-table parameters ``rest`` (flat ``{path: array}``) summed
    and the gradient of each sample's features kept. A chunk's activations stay in cache, which a whole batch of
    4096 does not (BENCHMARKS.md, issue 19). ``loss_fn(logits_c, batch_c)`` must add up over chunks: the batch's
    loss is the sum of its chunks' (a mean over the batch is written as a sum over the chunk divided by ``B``).
    ``chunk`` ``None`` or ``>= B``: one pass. The result equals the one-pass gradient up to float rounding (the sums
    run in another order), except that dropout draws each chunk's mask from ``fold_in(key, chunk index)``
    (seeded and deterministic, but not the one-pass mask).
    """
    n_b = features.emb_BxFxD.shape[0]
    per_sample = _per_sample(batch, n_b)

    body_loss = _body_loss(model, loss_fn, rngs, train)
    vg = jax.value_and_grad(lambda rest_p, feats_c, batch_c, i: body_loss(
        traverse_util.unflatten_dict(rest_p), feats_c, batch_c, i), argnums=(0, 1))

    def f(xs_c, i):
        loss, (g_rest, g_feats) = vg(rest, *xs_c, i)
        return (loss, g_rest), g_feats

    (loss, g_rest), g_feats = _over_chunks(f, (features, per_sample), n_b, chunk)
    return loss, g_rest, g_feats


def lookup_body_value_and_grad(model, loss_fn: Callable, rest: Mapping, rows: Mapping, ref_BxS: jax.Array,
                               batch: Mapping, chunk: int | None, rngs: Mapping | None = None, train: bool = False):
    """``(loss, g_rest, g_rows)``: the occurrences' lookup in the batch's projected rows ``rows``
    (:meth:`~mlet_jax.embeddings.EmbeddingStage.project_rows`), the model body and the loss, ``chunk`` samples at a
    time, as :func:`body_value_and_grad` runs the body alone.

    Each chunk looks its own samples up (``ref_BxS``'s rows for them) and its gradient with respect to the rows is
    added into one ``[G, W]`` gradient per table carried through the ``lax.scan``: XLA makes the lookup's backward a
    scatter-add into the carry, in place. Nothing per slot is stacked over the chunks (the whole batch's
    ``[B, F, d]`` features, a zero fill of their gradient, one slice and one write per chunk: ~20% of an NFM step at
    batch 4096, BENCHMARKS.md). ``chunk`` ``None`` or ``>= B``: one pass. Equal to the one-pass gradient up to float
    rounding; dropout as in :func:`body_value_and_grad`.
    """
    stage = model.embedding_stage()
    n_b = ref_BxS.shape[0]
    per_sample = _per_sample(batch, n_b)

    body_loss = _body_loss(model, loss_fn, rngs, train)

    def one(rest_p, rows_p, xs_c, i):  # i: the chunk's index, None for one pass
        ref_c, batch_c = xs_c
        p = traverse_util.unflatten_dict(rest_p)
        return body_loss(p, stage.lookup_projected(p, rows_p, ref_c, batch_c["dense"]), batch_c, i)

    vg = jax.value_and_grad(one, argnums=(0, 1))
    (loss, (g_rest, g_rows)), _ = _over_chunks(lambda xs_c, i: (vg(rest, rows, xs_c, i), None),
                                               (ref_BxS, per_sample), n_b, chunk)
    return loss, g_rest, g_rows


def _body_loss(model, loss_fn: Callable, rngs: Mapping | None, train: bool) -> Callable:
    """``(params, features_c, batch_c, i) -> loss`` of the model body on a chunk of samples; ``i``: the chunk's
    index, whose ``fold_in`` draws the chunk's dropout keys (``None``: one pass, the keys as given)."""
    def loss(params, features_c, batch_c, i):
        rngs_c = rngs if rngs is None or i is None else {k: jax.random.fold_in(r, i) for k, r in rngs.items()}
        logits = model.apply({"params": params}, features_c, batch_c["dense"], train=train, rngs=rngs_c,
                             method="body")
        return loss_fn(logits, batch_c)

    return loss


def _over_chunks(f: Callable, sliced, n_b: int, chunk: int | None):
    """``(summed, stacked)`` of ``f(sliced_c, i) -> (summed_c, stacked_c)`` over chunks of ``chunk`` samples of
    ``sliced`` (a pytree of ``[n_b, ...]`` arrays): a ``lax.scan`` over the ``n_b // chunk`` whole chunks, then one
    call on the ``n_b % chunk`` samples left (if any). ``summed`` adds the chunks' ``summed_c``; ``stacked`` joins
    their per-sample ``stacked_c`` back into ``[n_b, ...]`` (``None`` for none). ``i`` is the chunk's index (an
    int32 scalar); ``chunk`` ``None`` or ``>= n_b``: ``f(sliced, None)``, one pass."""
    if chunk is None or chunk >= n_b:
        return f(sliced, None)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 samples, got {chunk}")
    n_full, tail = divmod(n_b, chunk)

    def part(lo, n, shape):
        return jax.tree_util.tree_map(lambda x: x[lo:lo + n].reshape(*shape, *x.shape[1:]), sliced)

    def scan_body(carry, xs):
        summed_c, stacked_c = f(*xs)
        return jax.tree_util.tree_map(jnp.add, carry, summed_c), stacked_c

    summed_shape, _ = jax.eval_shape(f, part(0, chunk, (chunk,)), jnp.int32(0))
    zero = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), summed_shape)
    summed, stacked = jax.lax.scan(scan_body, zero, (part(0, n_full * chunk, (n_full, chunk)),
                                                      jnp.arange(n_full, dtype=jnp.int32)))
    stacked = jax.tree_util.tree_map(lambda g: g.reshape(-1, *g.shape[2:]), stacked)
    if tail:
        summed_t, stacked_t = f(part(n_full * chunk, tail, (tail,)), jnp.int32(n_full))
        summed = jax.tree_util.tree_map(jnp.add, summed, summed_t)
        stacked = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), stacked, stacked_t)
    return summed, stacked


def value_and_grad(model, loss_fn: Callable, params: Mapping, batch: Mapping, scratch_N: jax.Array | None = None,
                   rngs: Mapping | None = None, train: bool = False, chunk: int | None = None,
                   capacity_tiles: int | None = None):
    """``(loss, SparseGrads)`` of the batch's loss with respect to the non-table parameters and the batch's rows.

    Args:
        model: a :class:`mlet_jax.models.base.CTRModel` (its ``embedding_stage()`` names the tables and computes the
            features from gathered rows; its ``body`` runs on them).
        loss_fn: ``(logits [B'], batch') -> scalar`` on the batch or a chunk of its samples (``batch'`` holds the
            chunk's slice of every per-sample array); additive over chunks (:func:`body_value_and_grad`).
        params: the model's parameters (full tables).
        batch: ``{"dense", "ids", ...}``.
        scratch_N: the dedup scratch (:func:`dedup_rows`), or ``None`` for the sort-based dedup.
        rngs, train: passed to the model body (dropout).
        chunk: run the model body ``chunk`` samples at a time (:func:`body_value_and_grad`); the dedup, the
            compaction, the gather, the MLET projection, the occurrences' lookup and the row updates still run once
            for the whole batch. ``None``: one pass.
        capacity_tiles: the compact step's capacity in tiles (:func:`compact_plan`); ``None``:
            :data:`COMPACT_FRACTION` of the slots. Any capacity is exact (a batch with more distinct rows
            spills the rest into chunks after it, :func:`spill_plan`); it only decides speed.
    """
    stage = model.embedding_stage()
    ids_BxS = jnp.asarray(batch["ids"])
    rows_U, slot_BxS, scratch_N = dedup_rows(stage.row_ids(ids_BxS), scratch_N)
    tables, rest = split_tables(params, stage.table_paths)
    dense = batch["dense"]

    def grads(rows_G, ref_BxS, tile_field_T):
        gathered = {p: gather_rows(t, rows_G) for p, t in tables.items()}

        if chunk is None or chunk >= ids_BxS.shape[0]:
            def loss_of(rest_p, rows_p):
                p = traverse_util.unflatten_dict(rest_p)
                features = stage.lookup_slots(p, rows_p, ref_BxS, dense, tile_field_T)
                logits = model.apply({"params": p}, features, dense, train=train, rngs=rngs, method="body")
                return loss_fn(logits, batch)

            loss, (g_rest, g_rows) = jax.value_and_grad(loss_of, argnums=(0, 1))(rest, gathered)
            return loss, g_rest, g_rows

        # the rows once (MLET projects each gathered row once), the occurrences' lookup and the body chunk by chunk
        def rows_of(rest_p, rows_p):
            return stage.project_rows(traverse_util.unflatten_dict(rest_p), rows_p, ref_BxS, tile_field_T)

        projected, rows_vjp = jax.vjp(rows_of, rest, gathered)
        loss, g_rest, g_projected = lookup_body_value_and_grad(model, loss_fn, rest, projected, ref_BxS, batch, chunk,
                                                               rngs, train)
        g_rest_stage, g_rows = rows_vjp(g_projected)
        return loss, jax.tree_util.tree_map(jnp.add, g_rest, g_rest_stage), g_rows

    slots = stage.slots if stage.slots is not None else (1,) * len(stage.vocab_sizes)
    plan = compact_plan(stage.table_sizes, slots, ids_BxS.shape[0], stage.spec.kind == "mlet", capacity_tiles)
    if plan is None:  # as many distinct rows as slots may occur, or the capacity would be no smaller
        loss, g_rest, g_rows = grads(rows_U, slot_BxS, None)
        return loss, SparseGrads(g_rest, g_rows, rows_U, scratch_N)
    tile, capacity_tiles, may_overflow = plan
    if not may_overflow:  # the vocabularies cannot overflow the capacity
        c = compact_rows(rows_U, slot_BxS, slots, tile, capacity_tiles)
        loss, g_rest, g_rows = grads(c.rows_C, c.ref_BxS, c.tile_field_T)
        return loss, SparseGrads(g_rest, g_rows, c.rows_C, scratch_N)

    spill_tiles, n_spill = spill_plan(stage.table_sizes, slots, ids_BxS.shape[0], tile, capacity_tiles)
    c = compact_rows(rows_U, slot_BxS, slots, tile, capacity_tiles + n_spill * spill_tiles)
    loss, g = _spilling_value_and_grad(model, loss_fn, tables, rest, c, batch, tile, capacity_tiles, spill_tiles,
                                       n_spill, chunk, rngs, train)
    return loss, g._replace(scratch_N=scratch_N)


# Table widths whose rows are gathered inside an elementwise loop fusion (gather_rows). XLA CPU (jax 0.10) emits a
# gather that ends its fusion 2.2x slower for rows of 64 floats (MLET's usual k) than the same gather followed by an
# elementwise op: 0.58-0.62 against 0.25-0.30 ms for 7,488 rows of an 840,543 x 64 table; at width 32 the multiply
# is slower (0.28 against 0.22 ms), at 128 level, at 16 slightly slower (BENCHMARKS.md, issue 19 on the Intel box).
ELEMENTWISE_GATHER_WIDTHS = frozenset({64})


def gather_rows(table: jax.Array, rows: jax.Array) -> jax.Array:
    """``table[rows]`` for in-bounds ``rows``: the compact step's gather of the batch's distinct rows. For a table
    width in :data:`ELEMENTWISE_GATHER_WIDTHS` the rows are multiplied by a one that XLA cannot fold,
    ``1 + 0 * float32(rows[0])`` (exactly 1.0 for every int32 row), which makes XLA emit the gather as an
    elementwise loop. The result is the gathered value, NaN and inf included, except that a subnormal entry reads as
    0, as in every elementwise op of XLA CPU (flush to zero); the table itself is not touched, and the loops that
    write rows back as read (:func:`read_rows`) use the plain gather."""
    x = table.at[rows].get(mode="promise_in_bounds")
    if table.ndim != 2 or table.shape[1] not in ELEMENTWISE_GATHER_WIDTHS or rows.size == 0:
        return x
    return x * (1 + 0 * rows.reshape(-1)[0].astype(jnp.float32)).astype(x.dtype)


def read_rows(tables: Mapping, rows_R: jax.Array) -> tuple[dict, dict]:
    """``(rows, tables)``: each table's rows ``rows_R`` gathered, and the tables with their first row written back as
    read (unchanged values). A loop that reads rows of a table it carries this way owns the table: whatever takes the
    tables from the loop's result (the row updates) runs after the loop's reads, in place. A loop that only read a
    table it did not carry made XLA copy every table and accumulator to keep those reads valid (~5 ms a step)."""
    x = {p: t.at[rows_R].get(mode="promise_in_bounds") for p, t in tables.items()}
    return x, {p: t.at[rows_R[:1]].set(x[p][:1], mode="promise_in_bounds") for p, t in tables.items()}


def _spilling_value_and_grad(model, loss_fn, tables, rest, c: Compact, batch, tile: int, capacity_tiles: int,
                             spill_tiles: int, n_spill: int, chunk, rngs, train):
    """:func:`value_and_grad`'s compact step for a capacity a batch may overflow: ``c`` packs all of the batch's
    distinct rows (:func:`compact_rows` with room for ``n_spill`` spill chunks after the capacity). The first
    ``capacity`` rows are gathered, projected and differentiated as ever; the spill chunks the batch fills (none
    when it fits) are gathered and projected in a loop, their projections' gradient summed in a second, and their
    row gradients left to :meth:`RowSparse.update` (``SparseGrads.spilled``: the transposed projection of their
    d-wide gradient, computed where the table is updated), so no k-wide array larger than the capacity exists.
    Both loops carry the tables (:func:`read_rows`), and ``SparseGrads.tables`` hands them on to the updates."""
    stage = model.embedding_stage()
    cap, spill = capacity_tiles * tile, spill_tiles * tile
    n_used = jnp.clip(-(-(c.n_tiles - capacity_tiles) // spill_tiles), 0, n_spill)

    def part(i):  # the table rows and tile fields of spill chunk i
        return (jax.lax.dynamic_slice_in_dim(c.rows_C, cap + i * spill, spill),
                jax.lax.dynamic_slice_in_dim(c.tile_field_T, capacity_tiles + i * spill_tiles, spill_tiles))

    def gather(rows):
        return {p: gather_rows(t, rows) for p, t in tables.items()}

    def project(rest_p, rows_p, tile_field):
        return stage.project_rows(traverse_util.unflatten_dict(rest_p), rows_p, c.ref_BxS, tile_field)

    projected, vjp0 = jax.vjp(lambda r, x: project(r, x, c.tile_field_T[:capacity_tiles]), rest,
                              gather(c.rows_C[:cap]))
    n_rows = c.rows_C.shape[0]
    full = {p: jnp.zeros((n_rows, y.shape[1]), y.dtype).at[:cap].set(y) for p, y in projected.items()}

    def forward(i, carry):
        tabs, full = carry
        rows_i, tf_i = part(i)
        x, tabs = read_rows(tabs, rows_i)
        return tabs, {p: jax.lax.dynamic_update_slice_in_dim(full[p], y, cap + i * spill, 0)
                      for p, y in project(rest, x, tf_i).items()}

    tables, full = jax.lax.fori_loop(0, n_used, forward, (dict(tables), full))
    loss, g_rest, g_full = lookup_body_value_and_grad(model, loss_fn, rest, full, c.ref_BxS, batch, chunk, rngs,
                                                      train)
    g_rest_rows, g_rows = vjp0({p: g[:cap] for p, g in g_full.items()})
    g_rest = jax.tree_util.tree_map(jnp.add, g_rest, g_rest_rows)

    def g_part(i):
        return {p: jax.lax.dynamic_slice_in_dim(g, cap + i * spill, spill) for p, g in g_full.items()}

    if stage.spec.kind == "mlet":  # the projections' gradient from the spilled rows
        def backward(i, carry):
            tabs, acc = carry
            rows_i, tf_i = part(i)
            x, tabs = read_rows(tabs, rows_i)
            (g_r,) = jax.vjp(lambda r: project(r, x, tf_i), rest)[1](g_part(i))
            return tabs, jax.tree_util.tree_map(jnp.add, acc, g_r)

        tables, g_rest = jax.lax.fori_loop(0, n_used, backward, (dict(tables), g_rest))

    def spilled(i):  # the rows' gradient of spill chunk i: the projection is linear in the rows
        _, tf_i = part(i)
        x0 = {p: jnp.zeros((spill, t.shape[1]), t.dtype) for p, t in tables.items()}
        return jax.linear_transpose(lambda x: project(rest, x, tf_i), x0)(g_part(i))[0]

    return loss, SparseGrads(g_rest, g_rows, CompactRows(c.rows_C, cap, spill, n_used), None, spilled, tables)
