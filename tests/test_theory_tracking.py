"""theory.params (from_params) and theory.tracking, on hand-built parameter trees and a real (tiny) DLRM."""

import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import checks
from theory.params import field_matrix, field_rows, find_embedding, from_params
from theory.tracking import SpectrumTracker, field_spectrum, spectrum_record, track_saved

pytestmark = pytest.mark.usefixtures("float64")  # conftest: x64 for this module's tests only


def mlet_params(vocab, k, d, seed=0):
    rng = np.random.default_rng(seed)
    return {"embeddings": {"table": rng.standard_normal((sum(vocab), k)),
                           "projection": rng.standard_normal((len(vocab), k, d))},
            "top_mlp": {"kernel": np.ones((3, 1))}}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 15), min_size=1, max_size=4), st.integers(1, 12), st.integers(1, 12), st.data())
def test_from_params_is_the_transposed_field_slice(vocab, k, d, data):
    params = mlet_params(vocab, k, d)
    f = data.draw(st.integers(0, len(vocab) - 1))
    W1, W2 = from_params(params, vocab, f)
    off = sum(vocab[:f])
    table, proj = params["embeddings"]["table"], params["embeddings"]["projection"]
    assert W1.shape == (d, k) and W2.shape == (k, vocab[f]) and W1.dtype == np.float64
    np.testing.assert_array_equal(W1, proj[f].T)
    np.testing.assert_array_equal(W2, table[off:off + vocab[f]].T)
    # W = W1 W2 is the transpose of the field's rows of the collapsed (row-major) table.
    ref = (table[off:off + vocab[f]] @ proj[f]).T
    np.testing.assert_allclose(W1 @ W2, ref, rtol=0, atol=1e-13 * np.abs(ref).max())
    np.testing.assert_array_equal(field_matrix(table, vocab, f), table[off:off + vocab[f]].T)
    assert field_rows(vocab, f) == slice(off, off + vocab[f])


def test_param_errors_are_clear():
    vocab = (3, 4)
    params = mlet_params(vocab, 5, 2)
    with pytest.raises(ValueError, match="vocab_sizes sum to 8"):
        from_params(params, (3, 5), 0)
    with pytest.raises(ValueError, match="field 2 out of range"):
        from_params(params, vocab, 2)
    with pytest.raises(KeyError, match="'table' and 'projection'"):
        find_embedding({"embeddings": {"table": np.ones((7, 2))}})
    assert find_embedding({"model": params["embeddings"]}) is params["embeddings"]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_field_spectrum_statistics_match_the_full_factor_matrix(d, k, n, seed):
    rng = np.random.default_rng(seed)
    W1, W2 = rng.standard_normal((d, k)), rng.standard_normal((k, n))
    s = field_spectrum(W1, W2)
    s1, s2 = np.zeros(d), np.zeros(n)
    s1[: min(d, k)] = np.linalg.svd(W1, compute_uv=False)
    s2[: min(k, n)] = np.linalg.svd(W2, compute_uv=False)
    E = s1[:, None] ** 2 + s2[None, :] ** 2  # the full d x n matrix, built here only
    np.testing.assert_allclose(s["sigma1"], s1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s["sigma2"], s2[: min(k, n)], rtol=1e-10, atol=1e-12)
    for key, ref in (("ef_min", E.min()), ("ef_max", E.max()), ("ef_mean", E.mean()),
                     ("ef_mean_sigma1_part", np.mean(s1**2)), ("ef_mean_sigma2_part", np.mean(s2**2))):
        assert np.isclose(s[key], ref, rtol=1e-10, atol=1e-12), key
    # Lower median of the d n values.
    assert np.isclose(s["ef_median"], np.sort(E.ravel())[(E.size - 1) // 2], rtol=1e-10, atol=1e-12)
    assert s["ef_nonzero"] == s["ef_nonzero_closed_form"] == np.sum(E > 1e-9 * E.max())


def test_tracker_records_chosen_steps_and_saves_jsonl(tmp_path):
    vocab = (6, 9)
    tracker = SpectrumTracker(vocab, steps=[1, 5], every=4)
    states = {}
    for step in range(1, 9):
        params = mlet_params(vocab, 4, 3, seed=step)

        class State:  # what fit() passes: an object with .params
            pass

        state = State()
        state.params = params
        states[step] = params
        tracker(step, state)
    assert [r["step"] for r in tracker.records] == [1, 4, 5, 8]
    # Same numbers as the function over saved parameters.
    saved = track_saved({s: states[s] for s in (8, 1)}, vocab)
    assert [r["step"] for r in saved] == [1, 8]
    assert saved[1]["fields"][1]["sigma2"] == tracker.records[3]["fields"][1]["sigma2"]
    W1, W2 = from_params(states[5], vocab, 0)
    np.testing.assert_allclose(tracker.records[2]["fields"][0]["sigma1"], np.linalg.svd(W1, compute_uv=False))
    path = tmp_path / "spectra.jsonl"
    tracker.save(path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 4, 5, 8] and set(lines[0]["fields"]) == {"0", "1"}
    with pytest.raises(ValueError, match="every must be >= 1"):
        SpectrumTracker(vocab, every=0)


@pytest.fixture(scope="module")
def dlrm_rows():
    return checks.check_dlrm(seed=0)


def test_dlrm_real_gradient_checks_pass(dlrm_rows):
    assert all(r.passed for r in dlrm_rows), [(r.claim, r.measured) for r in dlrm_rows if not r.passed]
    by_claim = {r.claim.split(" [")[0]: r for r in dlrm_rows}
    assert by_claim["Eq. 13 = Eq. 6, thin, real G (max over fields)"].measured < 1e-12
    assert by_claim["real SGD step = W - lr F + lr^2 G W2^T W1^T G, rel. to step"].measured < 1e-11
    assert by_claim["real two-layer step changes all n columns (per field)"].measured == 50 + 40 + 30


def test_dlrm_gradient_is_column_sparse_on_the_queried_ids(dlrm_rows):
    """Eq. 5: G = sum_b g_b q_b^T is non-zero exactly on the batch's ids of the field."""
    c = checks.dlrm_case(seed=0)  # cached by the fixture's run
    vocab = c["vocab_sizes"]
    for f in range(len(vocab)):
        G = field_matrix(c["G_table"], vocab, f)
        assert G.dtype == np.float64
        np.testing.assert_array_equal(np.flatnonzero(np.any(G != 0, axis=0)), np.unique(c["ids"][:, f]))
    spectrum = spectrum_record(c["params"], vocab, step=0)
    assert set(spectrum["fields"]) == {0, 1, 2}


@pytest.mark.slow
def test_tracker_in_a_real_fit():
    from mlet_jax.data.synthetic import make_synthetic
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models.dlrm import DLRM
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer, fit

    ds = make_synthetic(0, n_train=512, n_valid=64, n_test=64, vocab_sizes=(30, 20), num_dense=2)
    vocab = tuple(ds.schema.vocab_sizes)
    model = DLRM(vocab_sizes=vocab, num_dense=2, embedding=EmbeddingSpec(kind="mlet", dim=4, inner_dim=8),
                 bottom_mlp=(8,), top_mlp=(8,))
    tracker = SpectrumTracker(vocab, steps=[1, 4])
    state, _ = fit(Trainer(model, TrainConfig(optimizer=OptimizerSpec("sgd", lr=0.2))), ds.train, batch_size=64,
                   callbacks=[tracker], progress=False)
    assert [r["step"] for r in tracker.records] == [1, 4]
    final = spectrum_record(jax.device_get(state.params), vocab)
    assert final["fields"][0]["d"] == 4 and len(final["fields"][0]["sigma2"]) == 8
    assert tracker.records[0]["fields"][0]["sigma1"] != final["fields"][0]["sigma1"]
