"""Row-sparse table updates equal dense ones: 20 steps, single-layer and MLET, SGD and torch Adagrad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlet_jax.data.base import Split
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.row_sparse import RowSparse
from mlet_jax.training import TrainConfig, Trainer, fit

VOCAB = (3, 7, 50, 200)


def _batches(n_steps: int, batch: int = 32, seed: int = 0, slots=None):
    rng = np.random.default_rng(seed)
    slots = slots or (1,) * len(VOCAB)
    out = []
    for _ in range(n_steps):
        cols = []
        for v, s in zip(VOCAB, slots, strict=True):
            # Small vocabularies and a skewed draw: every batch repeats ids within and across rows.
            ids = np.minimum(rng.geometric(0.3, (batch, s)) - 1, v - 1).astype(np.int32)
            if s > 1:
                ids[:, -1] = -1  # bag padding
            cols.append(ids)
        out.append({"dense": rng.standard_normal((batch, 2)).astype(np.float32),
                    "ids": np.concatenate(cols, axis=1),
                    "label": (rng.random(batch) < 0.3).astype(np.float32)})
    return out


def _model(kind: str, slots=None) -> DLRM:
    spec = EmbeddingSpec(kind=kind, dim=4, inner_dim=8 if kind == "mlet" else None)
    return DLRM(vocab_sizes=VOCAB, num_dense=2, embedding=spec, bottom_mlp=(8,), top_mlp=(8,), slots=slots)


def _train(model, config, batches):
    trainer = Trainer(model, config)
    state = trainer.init(0, batches[0])
    for b in batches:
        state, _ = trainer.train_step(state, b)
    return jax.tree_util.tree_map(np.asarray, state.params)


CASES = [  # the default run covers both table kinds, both optimizers and bag padding; the rest are slow
    pytest.param("single", OptimizerSpec("sgd", lr=0.2), False, id="single-sgd"),
    pytest.param("mlet", OptimizerSpec("adagrad", lr=0.05), True, id="mlet-adagrad-bags"),
    pytest.param("mlet", OptimizerSpec("sgd", lr=0.2), False, id="mlet-sgd", marks=pytest.mark.slow),
    pytest.param("single", OptimizerSpec("adagrad", lr=0.05), False, id="single-adagrad", marks=pytest.mark.slow),
    pytest.param("mlet", OptimizerSpec("adagrad", lr=0.05), False, id="mlet-adagrad", marks=pytest.mark.slow),
    pytest.param("single", OptimizerSpec("adagrad", lr=0.05), True, id="single-adagrad-bags",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kind, opt, bags", CASES)
def test_sparse_equals_dense_20_steps(kind, opt, bags):
    slots = (1, 3, 2, 1) if bags else None
    data = _batches(20, slots=slots)
    model = _model(kind, slots)
    # Repeated ids in every batch: the point of the test is that repeats accumulate, not overwrite.
    rows = np.concatenate([b["ids"].ravel() for b in data])
    assert len(np.unique(rows)) < rows.size // 4
    dense = _train(model, TrainConfig(optimizer=opt, sparse_tables=False), data)
    sparse = _train(model, TrainConfig(optimizer=opt, sparse_tables=True), data)
    for (path, d), s in zip(jax.tree_util.tree_leaves_with_path(dense), jax.tree_util.tree_leaves(sparse),
                            strict=True):
        np.testing.assert_allclose(s, d, atol=1e-6, rtol=0, err_msg=jax.tree_util.keystr(path))
    initial = jax.tree_util.tree_map(np.asarray, Trainer(model).init(0, data[0]).params)
    table0 = initial["embeddings"]["table"]
    assert np.abs(dense["embeddings"]["table"] - table0).max() > 1e-3  # the tables did train


def test_row_sparse_adagrad_accumulates_only_touched_rows():
    spec = OptimizerSpec("adagrad", lr=0.1)
    rs = RowSparse(spec)
    table = jnp.ones((6, 2), jnp.float32)
    state = rs.init(table)
    rows = jnp.array([1, 4, 0, 0], jnp.int32)  # unique rows padded with 0, the padding carries a zero gradient
    grad = np.array([[1.0, 2.0], [3.0, 4.0], [0.5, 0.5], [0.0, 0.0]], np.float32)
    new, st = rs.update(table, state, rows, jnp.asarray(grad))
    acc = np.zeros((6, 2), np.float32)
    acc[[1, 4, 0]] = grad[:3] ** 2
    want = np.ones((6, 2), np.float32)
    want[[1, 4, 0]] -= 0.1 * grad[:3] / (np.sqrt(acc[[1, 4, 0]]) + 1e-10)
    np.testing.assert_allclose(np.asarray(st.sum), acc, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new), want, rtol=1e-6)


def test_row_sparse_rejects_inexact_optimizers():
    with pytest.raises(ValueError, match="without momentum"):
        RowSparse(OptimizerSpec("sgd", lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match="without momentum, and without weight decay except SGD's"):
        RowSparse(OptimizerSpec("adagrad", lr=0.1, weight_decay=1e-4))
    with pytest.raises(ValueError, match="sparse_tables=True"):
        TrainConfig(optimizer=OptimizerSpec("adagrad", weight_decay=1e-4), sparse_tables=True)
    # no silent switch to dense tables: weight decay on tables must ask for them, and then gets them
    with pytest.raises(ValueError, match="sparse_tables=False"):
        TrainConfig(optimizer=OptimizerSpec("adagrad", weight_decay=1e-4))
    assert not TrainConfig(optimizer=OptimizerSpec("adagrad", weight_decay=1e-4), sparse_tables=False).sparse


def test_lazy_sgd_weight_decay_closed_form():
    """Untouched rows decay by (1 - lr wd)^k only when next touched, or at materialize: numpy float64 loop of
    torch's dense rule w <- w - lr (g + wd w) over every row."""
    lr, wd = 0.1, 0.5
    rs = RowSparse(OptimizerSpec("sgd", lr=lr, weight_decay=wd))
    table = jnp.asarray(np.arange(12, dtype=np.float32).reshape(6, 2) + 1)
    state = rs.init(table)
    steps = [([1, 1, 0], [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]),  # row 1 twice (a zero-gradient repeat), pad row 0
             ([3, 5, 0], [[0.5, -1.0], [2.0, 2.0], [0.0, 0.0]]),
             ([1, 1, 1], [[-1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])]
    want = np.asarray(table, np.float64)
    for rows, g in steps:
        grad = np.zeros_like(want)
        np.add.at(grad, rows, np.asarray(g))
        want = want - lr * (grad + wd * want)
        table, state = rs.update(table, state, jnp.asarray(rows, jnp.int32), jnp.asarray(g, jnp.float32))
    assert np.asarray(state.last).tolist() == [2, 3, 0, 2, 0, 2]  # row 0: padding at steps 1 and 2
    np.testing.assert_allclose(np.asarray(table)[1], want[1], rtol=1e-6)  # current: touched at step 3
    assert not np.allclose(np.asarray(table)[2], want[2])  # row 2 never touched: not decayed yet
    table, state = rs.materialize(table, state)
    np.testing.assert_allclose(np.asarray(table), want, rtol=1e-6)
    assert np.asarray(state.last).tolist() == [3] * 6


@pytest.mark.parametrize("kind, bags", [("single", False), pytest.param("mlet", True, marks=pytest.mark.slow)])
def test_lazy_sgd_weight_decay_equals_dense_20_steps(kind, bags):
    slots = (1, 3, 2, 1) if bags else None
    data = _batches(20, slots=slots)
    model = _model(kind, slots)
    opt = OptimizerSpec("sgd", lr=0.2, weight_decay=0.05)
    assert TrainConfig(optimizer=opt).sparse  # row-sparse by default now: exact
    dense = _train(model, TrainConfig(optimizer=opt, sparse_tables=False), data)
    trainer = Trainer(model, TrainConfig(optimizer=opt))
    state = trainer.init(0, data[0])
    for b in data:
        state, _ = trainer.train_step(state, b)
    stale = np.asarray(state.params["embeddings"]["table"])
    sparse = jax.tree_util.tree_map(np.asarray, trainer.sync(state).params)
    for (path, d), s in zip(jax.tree_util.tree_leaves_with_path(dense), jax.tree_util.tree_leaves(sparse),
                            strict=True):
        np.testing.assert_allclose(s, d, atol=1e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    assert np.abs(stale - dense["embeddings"]["table"]).max() > 1e-4  # untouched rows were behind before sync


def test_fit_returns_lazily_decayed_tables_up_to_date():
    data = _batches(6)
    split = Split(dense=np.concatenate([b["dense"] for b in data]), ids=np.concatenate([b["ids"] for b in data]),
                  label=np.concatenate([b["label"] for b in data]))
    model, opt = _model("single"), OptimizerSpec("sgd", lr=0.2, weight_decay=0.05)
    got, hist = fit(Trainer(model, TrainConfig(optimizer=opt)), split, batch_size=32, epochs=1, seed=0,
                    valid=split, eval_every=3, progress=False)
    want, hist_dense = fit(Trainer(model, TrainConfig(optimizer=opt, sparse_tables=False)), split, batch_size=32,
                           epochs=1, seed=0, valid=split, eval_every=3, progress=False)
    np.testing.assert_allclose(got.params["embeddings"]["table"], want.params["embeddings"]["table"], atol=1e-6)
    assert [e["auc"] for e in hist.evals] == pytest.approx([e["auc"] for e in hist_dense.evals], abs=1e-6)


def test_sort_based_dedup_equals_dense(monkeypatch, request):
    # Tables above SCATTER_DEDUP_MAX_ROWS rows deduplicate through jnp.unique's sort instead of the scatter-min
    # scratch array; force that path on a small table so it is checked too (Trainer.init then makes a state without
    # a dedup scratch, and the step compiles the sort path for that state structure).
    import mlet_jax.row_sparse as row_sparse

    # the limit is read when a step or init is traced, and jit caches traces per equal trainer: an earlier test's
    # trace of the same trainer would be reused (and this test's would outlive it) without clearing the caches
    jax.clear_caches()
    monkeypatch.setattr(row_sparse, "SCATTER_DEDUP_MAX_ROWS", 0)
    request.addfinalizer(jax.clear_caches)
    data = _batches(8, slots=(1, 3, 2, 1))
    model = _model("mlet", (1, 3, 2, 1))
    opt = OptimizerSpec("adagrad", 0.05)
    assert Trainer(model, TrainConfig(optimizer=opt)).init(0, data[0]).dedup is None
    dense = _train(model, TrainConfig(optimizer=opt, sparse_tables=False), data)
    sparse = _train(model, TrainConfig(optimizer=opt, sparse_tables=True), data)
    for d, s in zip(jax.tree_util.tree_leaves(dense), jax.tree_util.tree_leaves(sparse), strict=True):
        np.testing.assert_allclose(s, d, atol=1e-6, rtol=0)


def _dense_grads(model, batch, scratch=True):
    """``(loss, rest grads, {table path: table-shaped gradient}, row kind)`` of the row-sparse step on one batch;
    row kind: ``"compact"`` (no spill chunks), ``"spill"`` (with spill chunks) or ``"slots"`` (the per-slot step)."""
    import mlet_jax.row_sparse as row_sparse

    trainer = Trainer(model, TrainConfig(optimizer=OptimizerSpec("adagrad", 0.05)))
    state = trainer.init(0, batch)
    kind = []

    def grads(p, d):
        loss, g = row_sparse.value_and_grad(model, lambda lg, b: jnp.mean(lg * b["label"]), p, batch, d)
        kind.append("slots" if not isinstance(g.rows_U, row_sparse.CompactRows)
                    else "compact" if g.spilled is None else "spill")
        return loss, g.rest, g.table_grads(row_sparse.split_tables(p, trainer.table_paths)[0]), (
            g.rows_U.n_spilled if kind[-1] == "spill" else 0)

    loss, rest, full, n_spill = jax.jit(grads)(state.params, state.dedup if scratch else None)
    return float(loss), jax.tree_util.tree_map(np.asarray, rest), jax.tree_util.tree_map(np.asarray, full), (
        kind[0], int(n_spill))


@pytest.mark.parametrize("kind", ["single", "mlet"])
@pytest.mark.parametrize("scratch", [True, False], ids=["scatter-dedup", "sort-dedup"])
def test_compact_rows_equal_per_slot_and_spilled(monkeypatch, kind, scratch):
    # The same batch three ways: packed distinct rows, packed rows overflowing the capacity into spill chunks, and
    # the per-slot step alone (no compaction). Loss and every gradient (tables as table-shaped sums) must agree.
    import mlet_jax.row_sparse as row_sparse

    slots = (1, 3, 2, 1)
    batch = _batches(1, slots=slots, seed=3)[0]
    model = _model(kind, slots)
    monkeypatch.setattr(row_sparse, "COMPACT_FRACTION", 0.2)  # room for the batch, but the vocabularies could overflow
    stage = model.embedding_stage()
    tile, cap_tiles, may_overflow = row_sparse.compact_plan(VOCAB, slots, 32, kind == "mlet")
    assert may_overflow
    rows_U, slot_BxS, _ = row_sparse.dedup_rows(stage.row_ids(jnp.asarray(batch["ids"])))
    c = row_sparse.compact_rows(rows_U, slot_BxS, slots, tile, cap_tiles)
    assert bool(c.fits)
    compact = _dense_grads(model, batch, scratch)
    assert compact[3] == ("spill", 0)  # fits: no spill chunk filled
    monkeypatch.setattr(row_sparse, "COMPACT_FRACTION", 0.05)  # fewer rows than the batch has: it spills
    c = row_sparse.compact_rows(rows_U, slot_BxS, slots, *row_sparse.compact_plan(VOCAB, slots, 32, kind == "mlet")[:2])
    assert not bool(c.fits)
    spilled = _dense_grads(model, batch, scratch)
    assert spilled[3][0] == "spill" and spilled[3][1] >= 2  # several spill chunks filled
    monkeypatch.setattr(row_sparse, "COMPACT_FRACTION", 0)  # no compaction at all: today's per-slot step
    assert row_sparse.compact_plan(VOCAB, slots, 32, kind == "mlet") is None
    per_slot = _dense_grads(model, batch, scratch)
    assert per_slot[3] == ("slots", 0)
    for other in (spilled, per_slot):
        np.testing.assert_allclose(other[0], compact[0], rtol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(other[1:3]), jax.tree_util.tree_leaves(compact[1:3]), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_compact_rows_pack_each_distinct_row_once():
    import mlet_jax.row_sparse as row_sparse

    slots = (1, 3, 2, 1)
    batch = _batches(1, slots=slots, seed=1)[0]
    stage = _model("mlet", slots).embedding_stage()
    rows_BxS = np.asarray(stage.row_ids(jnp.asarray(batch["ids"])))
    rows_U, slot_BxS, _ = row_sparse.dedup_rows(jnp.asarray(rows_BxS))
    tile, cap_tiles = 4, 40
    c = row_sparse.compact_rows(rows_U, slot_BxS, slots, tile, cap_tiles)
    rows_C, ref = np.asarray(c.rows_C), np.asarray(c.ref_BxS)
    assert bool(c.fits)
    np.testing.assert_array_equal(ref < 0, rows_BxS < 0)
    np.testing.assert_array_equal(rows_C[ref[rows_BxS >= 0]], rows_BxS[rows_BxS >= 0])  # every occurrence's row
    used = np.unique(ref[ref >= 0])
    assert len(used) == len(np.unique(rows_BxS[rows_BxS >= 0]))  # each distinct row packed once
    # every packed row sits in a tile of its own field; the other entries are padding pointing at row 0
    ends = np.cumsum(VOCAB)
    field_of_row = np.searchsorted(ends, rows_C[used], side="right")
    np.testing.assert_array_equal(np.asarray(c.tile_field_T)[used // tile], field_of_row)
    assert (np.delete(rows_C, used) == 0).all()


def test_overflowing_batches_equal_dense(monkeypatch):
    # Every batch has more distinct rows than the capacity: 20 steps run the fallback branch and still equal dense.
    import mlet_jax.row_sparse as row_sparse

    monkeypatch.setattr(row_sparse, "COMPACT_FRACTION", 0.05)
    slots = (1, 3, 2, 1)
    data = _batches(20, slots=slots)
    model = _model("mlet", slots)
    stage = model.embedding_stage()
    tile, cap_tiles, may_overflow = row_sparse.compact_plan(VOCAB, slots, 32, True)
    assert may_overflow
    for b in data:
        rows_U, slot_BxS, _ = row_sparse.dedup_rows(stage.row_ids(jnp.asarray(b["ids"])))
        assert not bool(row_sparse.compact_rows(rows_U, slot_BxS, slots, tile, cap_tiles).fits)
    opt = OptimizerSpec("adagrad", 0.05)
    dense = _train(model, TrainConfig(optimizer=opt, sparse_tables=False), data)
    sparse = _train(model, TrainConfig(optimizer=opt, sparse_tables=True), data)
    for d, s in zip(jax.tree_util.tree_leaves(dense), jax.tree_util.tree_leaves(sparse), strict=True):
        np.testing.assert_allclose(s, d, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_name", ["dlrm", "deepfm"])
def test_spilling_step_updates_the_tables_in_place(monkeypatch, model_name):
    # The spill loops read the tables; unless they carry them (row_sparse.read_rows), XLA keeps those reads valid by
    # copying every table and accumulator before the updates (~5 ms a step at the synthetic default's 206k x 64).
    # The compiled step must hold no table-sized copy. DeepFM adds a width-1 first-order table.
    import re

    import mlet_jax.row_sparse as row_sparse
    from mlet_jax.models.deepfm import DeepFM

    monkeypatch.setattr(row_sparse, "COMPACT_FRACTION", 0.05)  # the capacity can overflow: spill loops compiled
    batch = _batches(1)[0]
    spec = EmbeddingSpec(kind="mlet", dim=4, inner_dim=8)
    model = (_model("mlet") if model_name == "dlrm" else
             DeepFM(vocab_sizes=VOCAB, num_dense=2, embedding=spec, dnn=(8,)))
    trainer = Trainer(model, TrainConfig(optimizer=OptimizerSpec("adagrad", 0.05)))
    state = trainer.init(0, batch)
    assert row_sparse.compact_plan(VOCAB, None, 32, True)[2]  # may overflow
    hlo = trainer.train_step.lower(state, batch).compile().as_text()
    assert "while" in hlo
    tables, _ = row_sparse.split_tables(state.params, trainer.table_paths)
    shapes = {f"f32[{t.shape[0]},{t.shape[1]}]" for t in tables.values()}
    copies = [m for m in re.findall(r"= (f32\[\d+,\d+\])\{[^}]*\} copy\(", hlo) if m in shapes]
    assert not copies, copies


@pytest.mark.parametrize("width", [64, 16])
def test_gather_rows_is_the_table_rows_bit_for_bit(width):
    """``row_sparse.gather_rows`` (an elementwise multiply by a one XLA cannot fold, at width 64) against numpy's
    ``take``: the same bits, for NaN, inf and -0 entries, under jit, with repeated rows and row 0; a subnormal entry
    reads as itself or as 0 (XLA CPU's elementwise ops flush subnormals to zero)."""
    from mlet_jax import row_sparse

    rng = np.random.default_rng(0)
    table = rng.normal(size=(1000, width)).astype(np.float32)
    table[3, :4] = [np.nan, np.inf, -np.inf, -0.0]
    table[5, 0] = np.float32(1e-45)  # subnormal
    rows = np.concatenate([[3, 5, 0, 999, 3], rng.integers(0, 1000, 300)]).astype(np.int32)
    got = np.asarray(jax.jit(row_sparse.gather_rows)(jnp.asarray(table), jnp.asarray(rows)))
    want = np.take(table, rows, axis=0)
    sub = (want != 0) & (np.abs(want) < np.finfo(np.float32).tiny)
    assert sub.sum() >= 1 and np.all((got[sub] == want[sub]) | (got[sub] == 0))
    np.testing.assert_array_equal(got[~sub].view(np.uint32), want[~sub].view(np.uint32))
    # the row that decides the one may be any int32 row, the largest included
    big = np.full(4, 2**31 - 1, np.int32)
    one = jax.jit(lambda r: (1 + 0 * r[0].astype(jnp.float32)))(jnp.asarray(big))
    assert float(one) == 1.0
