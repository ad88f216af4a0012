"""What an id outside its field's vocabulary does: one policy for training, evaluation and serving.

The tables of a model hold every field's rows one after another (fused row ``offset[f] + id``), so an id outside
``[0, vocab[f])`` would read another field's row. Every table therefore carries a policy
(:attr:`mlet_jax.embeddings.EmbeddingSpec.oov`):

* ``"error"`` (the default): host-side, a numpy batch with such an id is refused before it reaches a jitted step,
  evaluation or served ``predict`` (:func:`check_ids` names the field, the id and the vocabulary size). Inside jit
  (a traced caller skips the host check) every id is clipped into its own field, ``[0, vocab[f] - 1]``: never another
  field's row. The tables are exactly as without a policy, so in-range ids give bit-identical numbers.
* ``"row"``: every field gets one extra row, its last (local id ``vocab[f]``), that every out-of-range id maps to
  (negative ids included, except a bag slot's padding ``-1``). It is trained like any other row by the ids the data
  maps there, and serves unseen ids at inference.

In both policies a bag field's ``-1`` slots are padding (pooled as nothing). This module needs only numpy and
``jax.numpy``, so the served model (:mod:`mlet_jax.serving`) checks its inputs without importing flax.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

POLICIES = ("error", "row")
PAD_ID = -1


def check_policy(oov: str) -> str:
    if oov not in POLICIES:
        raise ValueError(f"oov policy must be one of {POLICIES}, got {oov!r}")
    return oov


def table_sizes(vocab_sizes: Sequence[int], oov: str) -> tuple[int, ...]:
    """Rows each field occupies in the fused tables: its vocabulary, plus one OOV row under ``"row"``."""
    extra = 1 if check_policy(oov) == "row" else 0
    return tuple(int(v) + extra for v in vocab_sizes)


def _slots(vocab_sizes, slots) -> tuple[int, ...]:
    return tuple(int(s) for s in slots) if slots is not None else (1,) * len(vocab_sizes)


def slot_arrays(vocab_sizes: Sequence[int], slots: Sequence[int] | None, oov: str):
    """Per id slot ``(vocab_S, offset_S, bag_S, lowest_S)``: its field's vocabulary, first fused row, whether it is a
    bag, and its lowest valid id (-1 in a bag slot, else 0); read-only, cached."""
    return _slot_arrays(tuple(int(v) for v in vocab_sizes), _slots(vocab_sizes, slots), oov)


@functools.lru_cache(maxsize=64)  # the host check runs per batch: build the per-slot arrays once per model
def _slot_arrays(vocab_sizes: tuple[int, ...], slots: tuple[int, ...], oov: str):
    sizes = np.asarray(table_sizes(vocab_sizes, oov), np.int64)
    off_F = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    out = (np.repeat(np.asarray(vocab_sizes, np.int64), slots), np.repeat(off_F, slots),
           np.repeat(np.asarray(slots) > 1, slots), np.where(np.repeat(np.asarray(slots) > 1, slots), PAD_ID, 0))
    for a in out:
        a.setflags(write=False)
    return out


def device_rows(ids_BxS, vocab_sizes: Sequence[int], slots: Sequence[int] | None, oov: str):
    """Fused table rows ``[B, S]`` (int32, jax) of local per-field ids under policy ``oov`` (bag padding stays -1).

    ``"error"`` clips every id into its field; ``"row"`` sends out-of-range ids to the field's OOV row. In-range ids
    get ``offset[f] + id`` either way.
    """
    import jax.numpy as jnp

    vocab_S, off_S, bag_S, _ = slot_arrays(vocab_sizes, slots, oov)
    n_1xS = jnp.asarray(vocab_S, jnp.int32)[None, :]
    off_1xS = jnp.asarray(off_S, jnp.int32)[None, :]
    ids = jnp.asarray(ids_BxS).astype(jnp.int32)
    if oov == "row":
        local = jnp.where((ids < 0) | (ids >= n_1xS), n_1xS, ids)
        pad = ids == PAD_ID
    else:
        local = jnp.clip(ids, 0, n_1xS - 1)
        pad = ids < 0  # as before the policy existed: any negative id in a bag slot is padding
    rows = local + off_1xS
    if bag_S.any():
        rows = jnp.where(pad & jnp.asarray(bag_S)[None, :], -1, rows)
    return rows


def check_ids(ids_BxS, vocab_sizes: Sequence[int], slots: Sequence[int] | None, oov: str,
              field_names: Sequence[str] | None = None, what: str = "ids") -> np.ndarray:
    """Check a host batch of local ids against the vocabularies; return it as int32 ready for the device.

    Raises ``ValueError`` (naming ``what``, the field, the id, its row and the vocabulary size) for a non-integer or
    misshapen array and, under ``"error"``, for an id outside ``[0, vocab[f])`` (``[-1, vocab[f])`` in a bag slot).
    Under ``"row"`` every integer is accepted; ids beyond int32 are mapped to the OOV row before the cast, so they
    cannot wrap around into the vocabulary.
    """
    check_policy(oov)
    ids = np.asarray(ids_BxS)
    slots_F = _slots(vocab_sizes, slots)
    n_slots = sum(slots_F)
    if ids.ndim != 2 or ids.shape[1] != n_slots:
        raise ValueError(f"{what} must have shape [batch, {n_slots}] (one column per id slot), got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {ids.dtype}")
    vocab_S, _, bag_S, lo_S = slot_arrays(vocab_sizes, slots_F, oov)
    if oov == "row":
        if ids.dtype.itemsize > 4 or ids.dtype.kind == "u":
            big = np.int64(vocab_S.max(initial=0))  # every id above the vocabularies means the same: OOV
            ids = np.clip(ids.astype(np.int64, copy=False), -2, big)
        return ids.astype(np.int32, copy=False)
    # one unsigned comparison per id: id - lowest wraps to a huge value below the lowest id (int32 when ids are)
    wide = np.int32 if ids.dtype.itemsize <= 4 and ids.dtype.kind == "i" else np.int64
    span_S = (vocab_S - lo_S).astype(np.uint32 if wide is np.int32 else np.uint64)
    shifted = ids.astype(wide, copy=False) - lo_S.astype(wide)[None, :]
    bad = shifted.view(span_S.dtype) >= span_S[None, :]
    if bad.any():
        r, s = (int(x) for x in np.argwhere(bad)[0])
        f = int(np.searchsorted(np.cumsum(slots_F), s, side="right"))
        name = f" ({field_names[f]!r})" if field_names is not None else ""
        lowest = "-1 (bag padding)" if bag_S[s] else "0"
        raise ValueError(f"{what}: field {f}{name} has id {int(ids[r, s])} in row {r}, outside its vocabulary of "
                         f"{int(vocab_S[s])} ids ({lowest} .. {int(vocab_S[s]) - 1}); {int(bad.sum())} such id(s) in "
                         "this batch. Map unseen values to a known id, or train with the 'row' OOV policy "
                         "(EmbeddingSpec(oov='row'), --oov row), which gives every field a row for them")
    return ids.astype(np.int32, copy=False)
