"""TrainConfig.chunk_samples: the model body run chunk by chunk gives the one-pass step, on both update paths."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_sparse import VOCAB, _batches, _model

from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models.deepfm import DeepFM
from mlet_jax.models.nfm import NFM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import CHUNK_SAMPLES, COMPACT_HEADROOM, TrainConfig, Trainer


def _run(model, config, data):
    """Parameters and per-step losses after training on ``data``."""
    trainer = Trainer(model, config)
    state = trainer.init(0, data[0])
    losses = []
    for b in data:
        state, m = trainer.train_step(state, b)
        losses.append(float(m["loss"]))
    return jax.tree_util.tree_map(np.asarray, state.params), np.asarray(losses)


def _assert_same(got, want):
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want[0]), jax.tree_util.tree_leaves(got[0]),
                            strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=0, err_msg=jax.tree_util.keystr(path))
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


SGD, ADAGRAD = OptimizerSpec("sgd", lr=0.2), OptimizerSpec("adagrad", lr=0.05)
CASES = [  # batches of 40: a chunk of 16 leaves a remainder of 8, a chunk of 8 divides them
    pytest.param("mlet", ADAGRAD, True, "sum", 16, True, id="mlet-adagrad-bags-sum-remainder-sparse"),
    pytest.param("single", SGD, False, "mean", 8, False, id="single-sgd-divides-dense"),
    pytest.param("mlet", ADAGRAD, True, "sum", 8, False, id="mlet-adagrad-bags-sum-divides-dense",
                 marks=pytest.mark.slow),
    pytest.param("single", SGD, False, "mean", 16, True, id="single-sgd-remainder-sparse", marks=pytest.mark.slow),
    pytest.param("single", SGD, False, "mean", 8, True, id="single-sgd-divides-sparse", marks=pytest.mark.slow),
    pytest.param("mlet", SGD, False, "mean", 16, False, id="mlet-sgd-remainder-dense", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kind, opt, bags, reduction, chunk, sparse", CASES)
def test_chunked_step_equals_one_pass(kind, opt, bags, reduction, chunk, sparse):
    # Batches of 40 with repeated ids in every batch; 3 steps. Reference: the one-pass dense path (its own program:
    # full-table gradients, no dedup, no chunks); the chunked step (row-sparse or dense) must match it.
    slots = (1, 3, 2, 1) if bags else None
    data = _batches(3, batch=40, slots=slots)
    rows = data[0]["ids"][data[0]["ids"] >= 0]
    assert len(np.unique(rows)) < rows.size // 3
    model = _model(kind, slots)
    ref = _run(model, TrainConfig(optimizer=opt, sparse_tables=False, loss_reduction=reduction, chunk_samples=0),
               data)
    cfg = TrainConfig(optimizer=opt, sparse_tables=sparse, loss_reduction=reduction, chunk_samples=chunk)
    assert Trainer(model, cfg).chunk_samples == chunk
    _assert_same(_run(model, cfg, data), ref)
    initial = Trainer(model).init(0, data[0]).params["embeddings"]["table"]
    assert np.abs(ref[0]["embeddings"]["table"] - np.asarray(initial)).max() > 1e-3  # the tables did train


@pytest.mark.slow
def test_chunked_row_sparse_step_with_overflowing_batches(monkeypatch):
    # The per-slot fallback branch (more distinct rows than the capacity) chunks its body too.
    import mlet_jax.row_sparse as row_sparse

    monkeypatch.setattr(row_sparse, "COMPACT_FRACTION", 0.05)
    slots = (1, 3, 2, 1)
    data = _batches(2, batch=40, slots=slots)
    model = _model("mlet", slots)
    assert row_sparse.compact_plan(VOCAB, slots, 40, True)[2]
    opt = OptimizerSpec("adagrad", lr=0.05)
    ref = _run(model, TrainConfig(optimizer=opt, sparse_tables=True, chunk_samples=0), data)
    _assert_same(_run(model, TrainConfig(optimizer=opt, sparse_tables=True, chunk_samples=16), data), ref)


@pytest.mark.parametrize("kind", ["mlet", "single"])
def test_chunked_first_order_model_equals_one_pass(kind):
    # DeepFM has a first-order part: a width-1 table over the same rows and dense weights, both read per chunk
    # from the rows projected once (EmbeddingStage.lookup_projected). Bags, repeats, a remainder chunk.
    slots = (1, 3, 2, 1)
    data = _batches(3, batch=40, slots=slots)
    spec = EmbeddingSpec(kind=kind, dim=4, inner_dim=8 if kind == "mlet" else None)
    model = DeepFM(vocab_sizes=VOCAB, num_dense=2, embedding=spec, slots=slots, dnn=(8,))
    ref = _run(model, TrainConfig(optimizer=ADAGRAD, sparse_tables=False, chunk_samples=0), data)
    _assert_same(_run(model, TrainConfig(optimizer=ADAGRAD, sparse_tables=True, chunk_samples=16), data), ref)
    assert np.abs(ref[0]["linear"]["dense"] - np.asarray(Trainer(model).init(0, data[0]).params["linear"]["dense"])
                  ).max() > 1e-3  # the first-order dense weights did train


def test_chunked_dropout_is_seeded_and_deterministic():
    data = _batches(2, batch=40)
    model = NFM(vocab_sizes=VOCAB, num_dense=2, embedding=EmbeddingSpec("single", dim=4), dnn=(8,),
                bi_dropout=0.5, dnn_dropout=0.5)
    cfg = TrainConfig(optimizer=OptimizerSpec("adagrad", lr=0.05), chunk_samples=16)

    def run(dropout_seed):  # the same initial parameters, the dropout key from dropout_seed
        trainer = Trainer(model, cfg)
        state = trainer.init(0, data[0]).replace(rng=jax.random.key(dropout_seed))
        for b in data:
            state, _ = trainer.train_step(state, b)
        return jax.tree_util.tree_map(np.asarray, state.params)

    a, b, other = run(0), run(0), run(1)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(other),
                                                        strict=True))


def test_chunk_samples_default_and_errors():
    model = _model("single")
    assert Trainer(model).chunk_samples == CHUNK_SAMPLES
    assert Trainer(model, TrainConfig(chunk_samples=0)).chunk_samples is None
    for bad in (-1, 1.5, True, "64"):
        with pytest.raises(ValueError, match="chunk_samples"):
            TrainConfig(chunk_samples=bad)


def test_compact_capacity_follows_the_first_batch():
    # Distinct rows per field of a hand-made batch (4 fields; a bag field of 3 slots with -1 padding): the capacity
    # is ceil(headroom x sum_f ceil(n_f / tile)) tiles, tile 1 single-layer, min(64, B / 8) = 4 rows for MLET.
    import mlet_jax.row_sparse as row_sparse

    slots = (1, 3, 2, 1)
    batch = _batches(1, batch=32, slots=slots, seed=5)[0]
    ids = batch["ids"]
    cols = np.split(ids, np.cumsum(slots)[:-1], axis=1)
    n_f = [len(np.unique(c[c >= 0])) for c in cols]
    for kind, tile in (("single", 1), ("mlet", 4)):
        trainer = Trainer(_model(kind, slots), TrainConfig(optimizer=ADAGRAD))
        want = int(np.ceil(COMPACT_HEADROOM * sum(-(-n // tile) for n in n_f)))
        assert trainer.compact_capacity(batch) == want
        assert Trainer(_model(kind, slots), TrainConfig(optimizer=ADAGRAD, compact_headroom=0)).compact_capacity(
            batch) is None
        plan = row_sparse.compact_plan(VOCAB, slots, 32, kind == "mlet", want)
        assert plan[1] == min(want, row_sparse.compact_plan(VOCAB, slots, 32, kind == "mlet")[1])
    assert Trainer(_model("single", slots), TrainConfig(optimizer=ADAGRAD, sparse_tables=False)).compact_capacity(
        batch) is None
    with pytest.raises(ValueError, match="compact_headroom"):
        TrainConfig(compact_headroom=0.5)


def test_capacity_from_a_narrow_first_batch_stays_exact():
    # The first batch repeats one id per field, so the capacity is a few rows; every later batch overflows it and
    # spills into chunks. 6 steps must equal the dense path (which has no capacity at all).
    slots = (1, 3, 2, 1)
    data = _batches(6, batch=32, slots=slots, seed=2)
    data[0] = {**data[0], "ids": np.where(data[0]["ids"] >= 0, 0, -1).astype(np.int32)}
    model = _model("mlet", slots)
    trainer = Trainer(model, TrainConfig(optimizer=ADAGRAD))
    assert trainer.compact_capacity(data[0]) == 5  # ceil(1.05 x 4 fields x 1 tile)
    ref = _run(model, TrainConfig(optimizer=ADAGRAD, sparse_tables=False), data)
    _assert_same(_run(model, TrainConfig(optimizer=ADAGRAD), data), ref)
