"""mlet_jax.compression against numpy references: Eckart-Young, a brute-force scale scan, hand-computed sizes."""

import numpy as np
import pytest

from mlet_jax import compression as C
from mlet_jax.data.synthetic import make_synthetic


def _table(n=60, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * rng.uniform(0.1, 2.0, d)).astype(np.float32)


@pytest.mark.parametrize("rank", [1, 2, 4, 7, 8, 12])
def test_low_rank_error_is_eckart_young(rank):
    x = _table()
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    err = np.linalg.norm(x.astype(np.float64) - C.low_rank_table(x, rank))
    np.testing.assert_allclose(err, np.sqrt(np.sum(s[rank:] ** 2)), rtol=1e-4, atol=1e-5)
    a, b = C.low_rank(x, rank)
    assert a.shape == (60, min(rank, 8)) and b.shape == (min(rank, 8), 8)
    assert np.linalg.matrix_rank(a @ b, tol=1e-4) == min(rank, 8)


def test_low_rank_fields_is_per_field():
    vocab = (5, 30, 25)
    x = _table(60, 8)
    out = C.low_rank_fields(x, vocab, 3)
    lo = 0
    for n in vocab:
        np.testing.assert_allclose(out[lo:lo + n], C.low_rank_table(x[lo:lo + n], 3), atol=1e-5)
        lo += n
    assert C.low_rank_params(vocab, 8, 3) == (5 * 3 + 3 * 8) + (30 * 3 + 3 * 8) + (25 * 3 + 3 * 8)
    assert C.low_rank_params((2,), 8, 4) == 2 * 8  # never more than the dense table
    with pytest.raises(ValueError, match="fused table with 60 rows"):
        C.low_rank_fields(x[:10], vocab, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_scale_matches_brute_force_scan(seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, size=(400, 6)) * 0.05).astype(np.float32)
    amax = np.abs(x).astype(np.float64).max()
    best, best_err = None, np.inf
    for i in range(1, 101):  # the reference: an explicit float64 scan of the same grid
        s = amax * i / 100 / 127
        q = np.clip(np.rint(x.astype(np.float64) / s), -127, 127)
        e = np.sqrt(np.sum((x - q * s) ** 2))
        if e < best_err - 1e-12:
            best, best_err = s, e
    got = C.int8_scale(x)
    assert got == pytest.approx(best, rel=1e-6)
    assert C.quantization_error(x, got) == pytest.approx(best_err, rel=1e-4)
    assert C.quantization_error(x, got) <= C.quantization_error(x, amax / 127) + 1e-9
    assert got <= amax / 127 * (1 + 1e-9)


def test_quantize_dequantize_roundtrip():
    x = np.array([-1.0, -0.5, 0.0, 0.26, 1.0, 3.0], np.float32)
    q = C.quantize(x, 1 / 127)
    assert q.dtype == np.int8 and q.tolist() == [-127, -64, 0, 33, 127, 127]
    np.testing.assert_allclose(C.dequantize(q, 1 / 127), np.clip(np.rint(x * 127), -127, 127) / 127, rtol=1e-6)
    vocab = (10, 50)
    t = _table(60, 4)
    qt = C.quantize_fields(t, vocab)
    assert qt.codes.dtype == np.int8 and qt.scales.shape == (2,)
    for f, (lo, n) in enumerate([(0, 10), (10, 50)]):
        assert qt.scales[f] == pytest.approx(C.int8_scale(t[lo:lo + n]))
    back = qt.dequantize()
    # the grid search never does worse than the max-abs scale (no clipping)
    assert np.linalg.norm(back[:10] - t[:10]) <= C.quantization_error(t[:10], np.abs(t[:10]).max() / 127) + 1e-7
    np.testing.assert_allclose(C.int8_roundtrip_fields(t, vocab), back)
    assert C.int8_scale(np.zeros((3, 2))) == 1.0
    with pytest.raises(ValueError, match="scale must be > 0"):
        C.quantize(x, 0.0)


def test_hashing_and_relative_size():
    ids = np.array([[0, 7, -1], [9, 3, 4]])
    assert C.hash_ids(ids, 4).tolist() == [[0, 3, -1], [1, 3, 0]]
    vocab = (8, 100, 30, 1000)
    assert C.largest_fields(vocab) == (1, 3)
    sizes = C.hashed_vocab_sizes(vocab, (1, 3))
    assert sizes == (8, 50, 30, 500)
    assert C.relative_table_size(vocab, 16) == 16.0
    assert C.relative_table_size(vocab, 16, bits=8) == 4.0
    rel = C.relative_table_size(vocab, 16, stored_vocab_sizes=sizes, bits=8)
    assert rel == pytest.approx(16 * 8 / 32 * sum(sizes) / sum(vocab))
    # all rows hashed to half: exactly the paper's d / 8
    assert C.relative_table_size((10, 20), 16, stored_vocab_sizes=(5, 10), bits=8) == 2.0
    assert C.relative_table_size((10, 20), 8, rank=2) == pytest.approx((10 * 2 + 16 + 20 * 2 + 16) / 30)


def test_hash_dataset_rewrites_every_split():
    ds = make_synthetic(0, n_train=500, n_valid=100, n_test=200, vocab_sizes=(4, 50, 200), num_dense=2)
    h = C.hash_dataset(ds)
    assert h.schema.vocab_sizes == (4, 25, 100)
    for nm in ("train", "valid", "test"):
        a, b = getattr(ds, nm), getattr(h, nm)
        np.testing.assert_array_equal(b.ids[:, 0], a.ids[:, 0])
        np.testing.assert_array_equal(b.ids[:, 1:], a.ids[:, 1:] % np.array([25, 100]))
        np.testing.assert_array_equal(b.label, a.label)
    h.validate()
    assert int(h.id_counts[2].sum()) == 500 and h.meta["hashing"]["fields"] == ["C2", "C3"]


def test_map_embedding_tables_only_touches_embeddings():
    p = {"embeddings": {"table": np.ones((3, 2))}, "linear": {"table": np.ones((3, 1))}, "dnn": {"kernel": 1.0}}
    out = C.map_embedding_tables(p, lambda t: 2 * t)
    assert out["embeddings"]["table"].sum() == 12 and out["linear"]["table"].sum() == 3 and out["dnn"]["kernel"] == 1
