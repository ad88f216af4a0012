"""Row-sparse table updates: only the rows a batch touches are gathered, differentiated and updated.

One step (:func:`value_and_grad` then :meth:`RowSparse.update` per table):

1. :func:`dedup_rows`: the batch's fused row ids ``[B, S]`` become ``U = B S`` slots, slot-major (slot ``s B + b``
   holds the row of occurrence ``(b, s)``), and every occurrence points at one slot holding its row;
2. each table's slot rows are gathered (``[U, width]``);
3. the model's embedding stage computes the same features from the gathered rows
   (:meth:`mlet_jax.embeddings.EmbeddingStage.lookup_slots`), the model body runs on them, and ``jax.grad`` gives the
   gradient with respect to the gathered rows (repeats of a row carry zero gradient: all occurrences point at one
   slot);
4. :class:`RowSparse` applies torch's SGD or Adagrad to those rows only.

For SGD without momentum and for Adagrad, without weight decay, this equals the dense update exactly: a row with a
zero gradient does not move and its accumulator does not change (tests check 20 steps against the dense path, bags
and repeats included). Cost grows with the batch, not with the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import traverse_util

from mlet_jax.optim import OptimizerSpec, _decayed_lr

Path = tuple[str, ...]

# Up to this many table rows the row-sparse state carries a table-sized int32 dedup scratch, and the step finds each
# batch row's slot by a scatter and a gather of O(B S) entries; above it, through a sort.
SCATTER_DEDUP_MAX_ROWS = 1 << 23


class RowSparseState(NamedTuple):
    count: chex.Array
    sum: Any  # Adagrad accumulator with the table's shape, or None for SGD


@dataclasses.dataclass(frozen=True)
class RowSparse:
    """Apply SGD or torch Adagrad to only the rows a batch touched.

    ``rows`` may contain repeats as long as every repeat but one has a zero gradient: updates are scatter-*added*, so
    zero-gradient repeats add nothing.
    """

    spec: OptimizerSpec

    def __post_init__(self):
        if not self.spec.supports_row_sparse:
            raise ValueError("row-sparse updates equal dense ones only without weight decay or momentum; "
                             "use dense updates for this optimizer")

    def init(self, table: jax.Array) -> RowSparseState:
        acc = (jnp.full_like(table, self.spec.initial_accumulator_value) if self.spec.name == "adagrad" else None)
        return RowSparseState(count=jnp.zeros([], jnp.int32), sum=acc)

    def update(self, table: jax.Array, state: RowSparseState, rows_U: jax.Array, grad_UxW: jax.Array):
        """Return the updated ``(table, state)``."""
        s = self.spec
        count = state.count + 1
        if s.name == "sgd":
            return table.at[rows_U].add(-s.lr * grad_UxW), RowSparseState(count, None)
        clr = _decayed_lr(s.lr, s.lr_decay, count, table.dtype)
        acc = state.sum.at[rows_U].add(grad_UxW * grad_UxW)
        step = -clr * (grad_UxW / (jnp.sqrt(acc[rows_U]) + s.eps))
        return table.at[rows_U].add(step.astype(table.dtype)), RowSparseState(count, acc)


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
        first_G = jnp.full((flat.size,), flat.size, jnp.int32).at[group].min(jnp.where(valid, occ, flat.size),
                                                                            mode="promise_in_bounds")
        slot = first_G.at[group].get(mode="promise_in_bounds")
    else:
        # padding writes nowhere (an out-of-range index is dropped): its slot must not stand for row 0 of field 0
        scratch_N = scratch_N.at[jnp.where(valid, flat, scratch_N.shape[0])].set(occ, mode="drop")
        slot = scratch_N.at[safe].get(mode="promise_in_bounds")
    slot_BxS = jnp.where(valid, slot, -1).reshape(rows_BxS.shape[::-1]).T
    return safe, slot_BxS, scratch_N


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
    rows: dict          # {table path: [U, width] gradient of the gathered slot rows}
    rows_U: jax.Array   # the table row of each slot
    scratch_N: Any      # the updated dedup scratch (or None)


def value_and_grad(model, loss_fn: Callable[[jax.Array], jax.Array], params: Mapping, batch: Mapping,
                   scratch_N: jax.Array | None = None, rngs: Mapping | None = None, train: bool = False):
    """``(loss, SparseGrads)`` of ``loss_fn(logits)`` with respect to the non-table parameters and the batch's rows.

    Args:
        model: a :class:`mlet_jax.models.base.CTRModel` (its ``embedding_stage()`` names the tables and computes the
            features from gathered rows; its ``body`` runs on them).
        loss_fn: ``logits [B] -> scalar``.
        params: the model's parameters (full tables).
        batch: ``{"dense", "ids", ...}``.
        scratch_N: the dedup scratch (:func:`dedup_rows`), or ``None`` for the sort-based dedup.
        rngs, train: passed to the model body (dropout).
    """
    stage = model.embedding_stage()
    rows_U, slot_BxS, scratch_N = dedup_rows(stage.row_ids(jnp.asarray(batch["ids"])), scratch_N)
    tables, rest = split_tables(params, stage.table_paths)
    gathered = {p: t.at[rows_U].get(mode="promise_in_bounds") for p, t in tables.items()}
    dense = batch["dense"]

    def loss_of(rest_p, rows_p):
        p = traverse_util.unflatten_dict(rest_p)
        features = stage.lookup_slots(p, rows_p, slot_BxS, dense)
        logits = model.apply({"params": p}, features, dense, train=train, rngs=rngs, method="body")
        return loss_fn(logits)

    loss, (g_rest, g_rows) = jax.value_and_grad(loss_of, argnums=(0, 1))(rest, gathered)
    return loss, SparseGrads(g_rest, g_rows, rows_U, scratch_N)
