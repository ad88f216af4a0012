"""Embeddings: lookup against numpy, initializers, collapse equality (f32 and f64), parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlet_jax.embeddings import Embeddings, EmbeddingSpec, collapse, count_params, embedding_param_count, field_offsets
from mlet_jax.models import DLRM, collapse_model

VOCAB = (5, 40, 300)


def make_ids(rng, b, vocab=VOCAB):
    return np.stack([rng.integers(0, v, b) for v in vocab], axis=1).astype(np.int32)


@pytest.mark.parametrize("kind", ["single", "mlet"])
def test_lookup_matches_numpy(kind):
    spec = EmbeddingSpec(kind, 4, 8 if kind == "mlet" else None)
    mod = Embeddings(VOCAB, spec)
    ids = make_ids(np.random.default_rng(0), 16)
    p = mod.init(jax.random.key(0), ids)["params"]
    got = np.asarray(mod.apply({"params": p}, ids))
    table = np.asarray(p["table"], np.float64)
    off = field_offsets(VOCAB)
    want = table[ids + off]
    if kind == "mlet":
        proj = np.asarray(p["projection"], np.float64)
        want = np.stack([want[:, f] @ proj[f] for f in range(len(VOCAB))], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bag_fields_sum_and_mean():
    spec = EmbeddingSpec("mlet", 3, 5)
    ids = np.array([[1, 2, 0, -1], [0, -1, -1, -1]], np.int32)  # field 0 plain, field 1 a bag of 3 slots
    for pooling in ("sum", "mean"):
        mod = Embeddings((4, 6), spec, slots=(1, 3), pooling=pooling)
        p = mod.init(jax.random.key(1), ids)["params"]
        got = np.asarray(mod.apply({"params": p}, ids))
        t, proj = np.asarray(p["table"], np.float64), np.asarray(p["projection"], np.float64)
        bag0 = t[4 + np.array([2, 0])].sum(0) / (2 if pooling == "mean" else 1)
        np.testing.assert_allclose(got[0, 1], bag0 @ proj[1], rtol=1e-5)
        np.testing.assert_allclose(got[1, 1], 0.0, atol=1e-7)  # empty bag
        np.testing.assert_allclose(got[1, 0], t[0] @ proj[0], rtol=1e-5)


def test_initializers():
    vocab = (100, 10_000)
    key = jax.random.key(0)
    t = np.asarray(Embeddings(vocab, EmbeddingSpec("single", 32)).init(key, np.zeros((1, 2), np.int32))
                   ["params"]["table"])
    # uniform(+-1/sqrt(n_field)) per field: bound and variance 1/(3 n)
    for (lo, n) in zip(field_offsets(vocab), vocab, strict=True):
        block = t[lo:lo + n]
        assert np.abs(block).max() <= 1 / np.sqrt(n) + 1e-7
        assert block.var() == pytest.approx(1 / (3 * n), rel=0.1)
    spec = EmbeddingSpec("mlet", 16, 64, table_init="normal", table_std=1e-4, projection_std=0.5)
    p = Embeddings(vocab, spec).init(key, np.zeros((1, 2), np.int32))["params"]
    assert np.asarray(p["table"]).std() == pytest.approx(1e-4, rel=0.05)
    assert np.asarray(p["projection"]).std() == pytest.approx(0.5, rel=0.05)
    px = Embeddings(vocab, EmbeddingSpec("single", 8, table_init="xavier")).init(key, np.zeros((1, 2), np.int32))
    assert np.abs(np.asarray(px["params"]["table"])[:100]).max() <= np.sqrt(6 / (100 + 8)) + 1e-7


@pytest.mark.parametrize("bad", [dict(kind="deep"), dict(kind="mlet"), dict(dim=0), dict(table_init="he")])
def test_spec_validation(bad):
    with pytest.raises(ValueError):
        EmbeddingSpec(**bad)


def _dlrm(kind, dtype):
    return DLRM(VOCAB, 3, EmbeddingSpec(kind, 4, 16 if kind == "mlet" else None), bottom_mlp=(8,), top_mlp=(8,),
                param_dtype=dtype)


def test_collapse_reproduces_logits_float32():
    rng = np.random.default_rng(0)
    ids, dense = make_ids(rng, 64), rng.standard_normal((64, 3)).astype(np.float32)
    model = _dlrm("mlet", jnp.float32)
    p = model.init(jax.random.key(0), dense, ids)["params"]
    # train-like perturbation so the check is not at init only
    p = jax.tree_util.tree_map(lambda x: x + 0.1 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), p)
    m1, p1 = collapse_model(model, p)
    assert m1.embedding.kind == "single" and p1["embeddings"]["table"].shape == (sum(VOCAB), 4)
    diff = np.abs(np.asarray(model.apply({"params": p}, dense, ids)) - np.asarray(m1.apply({"params": p1}, dense, ids)))
    assert diff.max() <= 1e-5
    single = _dlrm("single", jnp.float32)
    assert count_params(p1) == count_params(single.init(jax.random.key(1), dense, ids)["params"])


def test_collapse_reproduces_logits_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        ids, dense = make_ids(rng, 64), rng.standard_normal((64, 3))
        model = _dlrm("mlet", jnp.float64)
        p = model.init(jax.random.key(0), dense, ids)["params"]
        m1, p1 = collapse_model(model, p)
        a = np.asarray(model.apply({"params": p}, dense, ids))
        b = np.asarray(m1.apply({"params": p1}, dense, ids))
        assert a.dtype == np.float64
        assert np.abs(a - b).max() <= 1e-12
        # the collapsed table equals the float64 product field by field
        t, pr = np.asarray(p["embeddings"]["table"]), np.asarray(p["embeddings"]["projection"])
        blocks = zip(field_offsets(VOCAB), VOCAB, strict=True)
        want = np.concatenate([t[o:o + n] @ pr[f] for f, (o, n) in enumerate(blocks)])
        np.testing.assert_allclose(np.asarray(p1["embeddings"]["table"]), want, rtol=1e-13, atol=1e-15)


def test_param_count_formula():
    spec = EmbeddingSpec("mlet", 4, 16)
    p = Embeddings(VOCAB, spec).init(jax.random.key(0), np.zeros((1, 3), np.int32))["params"]
    assert count_params(p) == embedding_param_count(VOCAB, spec) == 345 * 16 + 3 * 16 * 4
    assert count_params(collapse({"e": p}, VOCAB)) == 345 * 4


def test_table_init_is_chunk_and_padding_invariant_and_has_the_right_law(monkeypatch):
    # The counter-based generator writes tables chunk by chunk (bounded memory); the values depend on (key, row,
    # column) only, so the chunk size and device padding change nothing, and the law is the stated one.
    from scipy import stats

    import mlet_jax.embeddings as emb

    vocab, ids = (3, 2000, 517), np.zeros((1, 3), np.int32)
    key = jax.random.key(7)

    def table(**kw):
        spec = EmbeddingSpec("single", 6, **kw)
        return np.asarray(Embeddings(vocab, spec).init(key, ids)["params"]["table"])

    ref = table()
    monkeypatch.setattr(emb, "INIT_CHUNK_ROWS", 7)  # 360 chunks, the last one overlapping
    np.testing.assert_array_equal(table(), ref)
    padded = np.asarray(Embeddings(vocab, EmbeddingSpec("single", 6), row_multiple=16).init(key, ids)
                        ["params"]["table"])
    assert padded.shape == (2528, 6)
    np.testing.assert_array_equal(padded[:2520], ref)
    assert not padded[2520:].any()
    bound = np.repeat(1 / np.sqrt(np.asarray(vocab, np.float64)), vocab)
    u = ref / bound[:, None]
    assert stats.kstest(u.ravel(), stats.uniform(-1, 2).cdf).pvalue > 1e-3
    five_sigma = 5 / np.sqrt(len(u))  # neighbouring columns and rows uncorrelated (correlation's sd is 1/sqrt(n))
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < five_sigma
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < five_sigma
    z = table(table_init="normal", table_std=0.5) / 0.5
    assert stats.kstest(z.ravel(), stats.norm.cdf).pvalue > 1e-3
