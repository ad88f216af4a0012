"""theory.spectral against independent numpy float64 references (np.linalg.svd, literal loops)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import count_nonzero_enhancement_factors, enhancement_factors, svd_factors
from theory.spectral import (
    LAPACK_MAX_N,
    full_right_vectors,
    measured_nonzero_enhancement_factors,
    right_basis,
    thin_right_svd,
)

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def shapes(draw):
    """(d, k, n, seed) with d, n in 1..40 and k in one of the three regimes k > d, k = d, k < d."""
    d = draw(st.integers(1, 40))
    n = draw(st.integers(1, 40))
    regime = draw(st.sampled_from(["k>d", "k=d", "k<d"] if d > 1 else ["k>d", "k=d"]))
    k = {"k>d": draw(st.integers(d + 1, 41)), "k=d": d, "k<d": draw(st.integers(1, max(1, d - 1)))}[regime]
    return d, k, n, draw(st.integers(0, 2**31 - 1))


def factors(d, k, n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((d, k)), rng.standard_normal((k, n)), rng.standard_normal((d, n))


def padded_singular_values(A, length):
    s = np.linalg.svd(A, compute_uv=False)
    out = np.zeros(length)
    out[: s.size] = s
    return out


@SETTINGS
@given(shapes())
def test_svd_factors_reconstruct_the_gram_matrices(shape):
    d, k, n, seed = shape
    W1, W2, _ = factors(d, k, n, seed)
    f = svd_factors(W1, W2)
    r = min(k, n)
    assert f.U.shape == (d, d) and f.sigma1.shape == (d,) and f.V.shape == (n, r) and f.sigma2.shape == (r,)
    np.testing.assert_allclose(f.sigma1, padded_singular_values(W1, d), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f.sigma2, padded_singular_values(W2, r), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f.U.T @ f.U, np.eye(d), atol=1e-12)
    np.testing.assert_allclose(f.V.T @ f.V, np.eye(r), atol=1e-12)
    # W1 W1^T = U S1 S1^T U^T and W2^T W2 = V S2^T S2 V^T (the two terms of Eq. 16).
    scale1, scale2 = np.linalg.norm(W1) ** 2, np.linalg.norm(W2) ** 2
    np.testing.assert_allclose(f.U @ np.diag(f.sigma1**2) @ f.U.T, W1 @ W1.T, atol=1e-12 * scale1)
    np.testing.assert_allclose(f.V @ np.diag(f.sigma2**2) @ f.V.T, W2.T @ W2, atol=1e-12 * scale2)


@SETTINGS
@given(shapes())
def test_enhancement_factors_match_padded_singular_values(shape):
    d, k, n, seed = shape
    W1, W2, _ = factors(d, k, n, seed)
    s1, s2 = padded_singular_values(W1, d), padded_singular_values(W2, n)
    ref = np.empty((d, n))
    for i in range(d):
        for j in range(n):
            ref[i, j] = s1[i] ** 2 + s2[j] ** 2
    np.testing.assert_allclose(enhancement_factors(W1, W2), ref, rtol=1e-12, atol=1e-12 * ref.max())


@SETTINGS
@given(shapes())
def test_nonzero_counts_closed_form_and_measured_against_brute_force(shape):
    d, k, n, seed = shape
    W1, W2, _ = factors(d, k, n, seed)
    s1, s2 = padded_singular_values(W1, d), padded_singular_values(W2, n)
    # Generic Gaussian factors have full rank: sigma1(i) > 0 iff i < min(d, k), sigma2(j) > 0 iff j < min(k, n).
    nz1 = s1 > 1e-9 * s1.max()
    nz2 = s2 > 1e-9 * s2.max()
    brute = sum(1 for i in range(d) for j in range(n) if nz1[i] or nz2[j])
    assert count_nonzero_enhancement_factors(d, k, n) == brute
    assert measured_nonzero_enhancement_factors(W1, W2) == brute
    if n >= k:  # the paper's expressions (Section 2.4) assume n >= k
        assert brute == (d * n if k >= d else k * n + (d - k) * k)


def test_paper_counts_by_hand():
    assert count_nonzero_enhancement_factors(16, 64, 1000) == 16_000
    assert count_nonzero_enhancement_factors(16, 16, 1000) == 16_000
    assert count_nonzero_enhancement_factors(16, 4, 1000) == 4 * 1000 + 12 * 4
    with pytest.raises(ValueError, match="positive integer"):
        count_nonzero_enhancement_factors(0, 4, 10)


def test_measured_count_sees_rank_deficiency():
    rng = np.random.default_rng(0)
    d, k, n = 6, 8, 30
    W1 = rng.standard_normal((d, 2)) @ rng.standard_normal((2, k))  # rank 2 < d
    W2 = rng.standard_normal((k, 3)) @ rng.standard_normal((3, n))  # rank 3
    # sigma1 non-zero for i < 2 (2 n factors), else only where sigma2(j) != 0, j < 3: (6 - 2) * 3.
    assert measured_nonzero_enhancement_factors(W1, W2) == 2 * n + 4 * 3


@pytest.mark.parametrize("cond_scale", [1.0, 100.0, 1e9])
def test_cholesky_qr_path_matches_lapack(cond_scale):
    """The Gram-matrix route (one pass, two passes, LAPACK fallback) gives the same thin SVD as LAPACK."""
    rng = np.random.default_rng(1)
    k, n = 12, 600
    W2 = rng.standard_normal((k, n))
    W2[0] *= cond_scale
    basis = right_basis(W2, method="cholqr")
    assert (basis.B is W2) == (cond_scale == 1.0)  # well conditioned: V_r stays implicit
    V, s = thin_right_svd(W2, method="cholqr")
    np.testing.assert_allclose(s, np.linalg.svd(W2, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(V @ np.diag(s**2) @ V.T, W2.T @ W2, atol=1e-11 * np.linalg.norm(W2) ** 2)


def test_auto_uses_gram_route_only_for_wide_large_tables():
    rng = np.random.default_rng(2)
    assert right_basis(rng.standard_normal((4, 100))).B.shape == (4, 100)  # LAPACK: B = V_r^T, M = I
    assert np.array_equal(right_basis(rng.standard_normal((4, 100))).M, np.eye(4))
    W2 = rng.standard_normal((4, LAPACK_MAX_N + 1))
    assert right_basis(W2).B is W2


def test_full_right_vectors_refuses_large_n():
    with pytest.raises(ValueError, match=r"accepts n <= 4096.*method='thin'"):
        full_right_vectors(np.zeros((2, 4097)))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="inner dimensions differ"):
        svd_factors(np.ones((3, 4)), np.ones((5, 6)))
    with pytest.raises(ValueError, match="W1 must have 2 dimensions"):
        svd_factors(np.ones(3), np.ones((5, 6)))
