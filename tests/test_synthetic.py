"""The synthetic generator: Zipf law, determinism, schema, and that labels follow the hidden model."""

import numpy as np
import pytest

from mlet_jax.data.synthetic import make_synthetic, zipf_cdf
from mlet_jax.metrics import roc_auc


def fitted_zipf_exponent(counts: np.ndarray, top: int) -> float:
    """Least-squares slope of log count over log rank on the `top` most frequent ids."""
    c = np.sort(counts)[::-1][:top].astype(np.float64)
    r = np.arange(1, top + 1, dtype=np.float64)
    slope = np.polyfit(np.log(r), np.log(c), 1)[0]
    return -slope


@pytest.mark.parametrize("s", [0.8, 1.1, 1.5])
def test_zipf_exponent_is_recovered(s):
    ds = make_synthetic(3, n_train=200_000, n_valid=0, n_test=10, vocab_sizes=(2000,), zipf_exponent=s)
    assert abs(fitted_zipf_exponent(ds.id_counts[0], top=100) - s) <= 0.1


def test_zipf_cdf_closed_form():
    c = zipf_cdf(3, 1.0)
    h = 1 + 1 / 2 + 1 / 3
    np.testing.assert_allclose(c, [1 / h, 1.5 / h, 1.0])


def test_deterministic_and_seed_sensitive():
    a = make_synthetic(7, n_train=5000, n_valid=100, n_test=1000)
    b = make_synthetic(7, n_train=5000, n_valid=100, n_test=1000)
    c = make_synthetic(8, n_train=5000, n_valid=100, n_test=1000)
    for x, y in ((a.train, b.train), (a.test, b.test)):
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.dense, y.dense)
        np.testing.assert_array_equal(x.label, y.label)
    assert not np.array_equal(a.train.ids, c.train.ids)


def test_schema_counts_and_ctr():
    ds = make_synthetic(0, n_train=20_000, n_valid=1000, n_test=5000, ctr=0.3)
    ds.validate()
    assert ds.train.ids.dtype == np.int32 and ds.train.dense.dtype == np.float32
    assert ds.schema.num_fields == 8 and ds.schema.num_dense == 4
    for f, v in enumerate(ds.schema.vocab_sizes):
        np.testing.assert_array_equal(ds.id_counts[f], np.bincount(ds.train.ids[:, f], minlength=v))
    assert abs(ds.train.label.mean() - 0.3) < 0.02
    # labels are drawn from the hidden model: its probabilities rank the test labels well
    assert roc_auc(ds.test.label, ds.meta["test_prob"]) > 0.8


@pytest.mark.parametrize("bad", [dict(vocab_sizes=()), dict(zipf_exponent=0), dict(ctr=1.5), dict(n_train=0)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        make_synthetic(0, **{"n_train": 100, "n_valid": 0, "n_test": 10, **bad})
