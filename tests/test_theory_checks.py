"""theory.checks: each check's measured numbers against numpy references, and checks that must fail do fail."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import checks


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_claim1_residual_is_small_and_the_basis_is_a_kron_of_full_bases(d, k, n, seed):
    W1, W2, _, _ = checks.random_case(d, k, n, seed)
    assert checks.claim1_residual(W1, W2) < 1e-12
    # Independent: vec(u_i v_j^T) (column-major) are orthonormal for the full numpy SVD bases.
    U = np.linalg.svd(W1, full_matrices=True)[0]
    V = np.linalg.svd(W2, full_matrices=True)[2].T
    B = np.stack([np.outer(U[:, i], V[:, j]).ravel(order="F") for j in range(n) for i in range(d)], axis=1)
    np.testing.assert_allclose(B.T @ B, np.eye(n * d), atol=1e-12)


def test_claim1_refuses_large_bases():
    with pytest.raises(ValueError, match="n d <= 2048"):
        checks.claim1_residual(np.ones((8, 4)), np.ones((4, 300)))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 20), st.integers(1, 30), st.integers(1, 40), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_random_case_and_sparsity_counts(d, k, n, b, seed):
    W1, W2, G, queried = checks.random_case(d, k, n, seed, batch=b)
    assert W1.shape == (d, k) and W2.shape == (k, n) and G.shape == (d, n)
    assert np.isclose(np.linalg.norm(G), 1.0)
    assert np.all(np.abs(W2) <= 1 / np.sqrt(n))
    nonzero = np.flatnonzero(np.any(G != 0, axis=0))
    np.testing.assert_array_equal(nonzero, queried)
    c = checks.sparsity_counts(W1, W2, G)
    W = W1 @ W2
    single = np.sum(np.any((W - 0.1 * G) != W, axis=0))
    two = np.sum(np.any((W1 - 0.1 * G @ W2.T) @ (W2 - 0.1 * W1.T @ G) != W, axis=0))
    assert c == {"queried": min(b, n), "n": n, "single_layer": single, "two_layer": two}
    assert c["single_layer"] == min(b, n)


def test_second_order_measurements_against_numpy():
    W1, W2, G, _ = checks.random_case(5, 9, 60, seed=1)
    m = checks.second_order_measurements(W1, W2, G)
    W = W1 @ W2
    F = W1 @ W1.T @ G + G @ W2.T @ W2
    for eta, r in zip(m["etas"], m["first_order_residuals"], strict=True):
        exact = (W1 - eta * G @ W2.T) @ (W2 - eta * W1.T @ G)
        assert np.isclose(r, np.linalg.norm(exact - (W - eta * F)), rtol=1e-6)
        # ... which is eta^2 ||G W2^T W1^T G||.
        assert np.isclose(r, eta**2 * np.linalg.norm(G @ W2.T @ W1.T @ G), rtol=1e-6)
    assert abs(m["slope"] - 2) < 1e-6
    assert m["eta2_residual"] < 1e-10 and m["expansion_residual"] < 1e-10


def _sigma2_dropped(W1, W2, G, method="thin"):
    """Eq. 13 with the sigma2(j)^2 term dropped: W1 W1^T G, a plausible wrong theorem."""
    return np.asarray(W1) @ np.asarray(W1).T @ np.asarray(G)


def _one_percent_off(real):
    return lambda W1, W2, G, method="thin": 1.01 * real(W1, W2, G, method=method)


@pytest.mark.parametrize("broken", ["sigma2 dropped", "1% off"])
def test_a_wrong_theorem_fails_every_eq13_check(monkeypatch, broken):
    """With a broken spectral_update every Eq. 13 check reports FAIL, on random and on real DLRM gradients, and the
    checks that do not use it still pass."""
    fake = _sigma2_dropped if broken == "sigma2 dropped" else _one_percent_off(checks.spectral_update)
    monkeypatch.setattr(checks, "spectral_update", fake)
    rows = checks.run_random(n=120, d=6, k=10, seed=3)
    if broken == "sigma2 dropped":  # the real DLRM gradient once (it compiles a model)
        rows += checks.check_dlrm(seed=0)
    eq13 = [r for r in rows if r.claim.startswith("Eq. 13")]
    assert len(eq13) == (8 if broken == "sigma2 dropped" else 6)  # thin and dense: three regimes (+ DLRM)
    assert not any(r.passed for r in eq13), [r.claim for r in eq13 if r.passed]
    assert all(r.measured > 1e-3 for r in eq13)
    others = [r for r in rows if not r.claim.startswith("Eq. 13")]
    assert others and all(r.passed for r in others), [r.claim for r in others if not r.passed]


def test_default_ks_cover_all_regimes():
    assert {checks.regime(8, k) for k in checks.default_ks(8, 32)} == {"k>d", "k=d", "k<d"}
    assert {checks.regime(8, k) for k in checks.default_ks(8, 3)} == {"k>d", "k=d", "k<d"}
    assert {checks.regime(1, k) for k in checks.default_ks(1, 4)} == {"k>d", "k=d"}


def test_run_random_small_passes_and_reports_numbers():
    rows = checks.run_random(n=120, d=6, k=10, seed=3)
    assert all(r.passed for r in rows), [r.claim for r in rows if not r.passed]
    claims = " ".join(r.claim for r in rows)
    for regime in ("k>d", "k=d", "k<d"):
        assert f"Eq. 13 = Eq. 6, thin, {regime}" in claims and f"Eq. 13 = Eq. 6, dense, {regime}" in claims
    counts = [r for r in rows if r.claim.startswith("non-zero")]
    assert [r.measured for r in counts] == [6 * 120, 6 * 120, 3 * 120 + 3 * 3]
    sparsity = [r for r in rows if "changes" in r.claim]
    assert [r.measured for r in sparsity] == [8, 120]


def test_check_enhancement_rows():
    W1, W2, G, _ = checks.random_case(6, 12, 80, seed=4)
    rows = checks.check_enhancement(W1, W2, G)
    assert all(r.passed for r in rows)
    assert abs(rows[1].measured - 1) < 0.01 and abs(rows[2].measured - 1) < 0.05
