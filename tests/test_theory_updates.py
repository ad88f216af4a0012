"""theory.updates against independent float64 references: literal sums over the full SVD bases, and numerical and
JAX gradients of the linear loss <G, W1 W2> for the exact two-layer SGD step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import theory.updates
from theory import (
    DENSE_MAX_N,
    first_order_update,
    single_layer_sgd_step,
    spectral_update,
    two_layer_sgd_step,
)
from theory.updates import second_order_term

pytestmark = pytest.mark.usefixtures("float64")  # conftest: x64 for this module's tests only

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def case(draw):
    """(W1, W2, G) with d, n in 1..40 and k > d, k = d or k < d; G dense or column-sparse (a batch gradient)."""
    d = draw(st.integers(1, 40))
    n = draw(st.integers(1, 40))
    regime = draw(st.sampled_from(["k>d", "k=d", "k<d"] if d > 1 else ["k>d", "k=d"]))
    k = {"k>d": draw(st.integers(d + 1, 41)), "k=d": d, "k<d": draw(st.integers(1, max(1, d - 1)))}[regime]
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    W1, W2, G = rng.standard_normal((d, k)), rng.standard_normal((k, n)), rng.standard_normal((d, n))
    if draw(st.booleans()):
        G[:, rng.random(n) < 0.7] = 0.0
    return W1, W2, G


def reference_spectral(W1, W2, G):
    """sum_ij g_ij (sigma1(i)^2 + sigma2(j)^2) u_i v_j^T, literally, with the full U (d x d) and V (n x n)."""
    d, n = G.shape
    U, s1, _ = np.linalg.svd(W1, full_matrices=True)
    _, s2, Vt = np.linalg.svd(W2, full_matrices=True)
    sigma1, sigma2 = np.zeros(d), np.zeros(n)
    sigma1[: s1.size], sigma2[: s2.size] = s1, s2
    out = np.zeros((d, n))
    for i in range(d):
        for j in range(n):
            g_ij = U[:, i] @ G @ Vt[j]
            out += g_ij * (sigma1[i] ** 2 + sigma2[j] ** 2) * np.outer(U[:, i], Vt[j])
    return out


def assert_close(actual, expected, rtol=1e-10):
    scale = max(np.linalg.norm(expected), 1e-300)
    assert np.linalg.norm(actual - expected) <= rtol * scale, np.linalg.norm(actual - expected) / scale


@SETTINGS
@given(case())
def test_first_order_update_is_eq6(c):
    W1, W2, G = c
    assert_close(first_order_update(W1, W2, G), W1 @ W1.T @ G + G @ (W2.T @ W2))


@SETTINGS
@given(case(), st.sampled_from(["thin", "dense"]))
def test_spectral_update_is_the_literal_sum(c, method):
    W1, W2, G = c
    ref = reference_spectral(W1, W2, G)
    assert_close(spectral_update(W1, W2, G, method=method), ref)
    # Main Theorem (Eq. 18): the same matrix as Eq. 6.
    assert_close(ref, W1 @ W1.T @ G + G @ (W2.T @ W2))


def bilinear_gradients(W1, W2, G):
    """dL/dW1 and dL/dW2 of L = <G, W1 W2> by central differences with unit steps (exact: L is linear in each)."""

    def loss(a, b):
        return float(np.sum(G * (a @ b)))

    grads = []
    for X, f in ((W1, lambda x: loss(x, W2)), (W2, lambda x: loss(W1, x))):
        g = np.empty_like(X)
        for idx in np.ndindex(X.shape):
            E = np.zeros_like(X)
            E[idx] = 1.0
            g[idx] = (f(X + E) - f(X - E)) / 2.0
        grads.append(g)
    return grads


@SETTINGS
@given(case(), st.floats(1e-4, 1.0))
def test_two_layer_sgd_step_matches_numerical_gradients(c, eta):
    W1, W2, G = c
    g1, g2 = bilinear_gradients(W1, W2, G)
    ref = (W1 - eta * g1) @ (W2 - eta * g2)
    assert_close(two_layer_sgd_step(W1, W2, G, eta), ref, rtol=1e-9)
    # ... and expands to Eq. 6 plus the eta^2 term.
    W = W1 @ W2
    assert_close(two_layer_sgd_step(W1, W2, G, eta),
                 W - eta * (W1 @ W1.T @ G + G @ W2.T @ W2) + eta**2 * (G @ W2.T @ W1.T @ G), rtol=1e-11)
    assert_close(second_order_term(W1, W2, G), G @ W2.T @ W1.T @ G)


@pytest.mark.parametrize("d,k,n", [(3, 5, 7), (4, 4, 6), (5, 2, 8)])
def test_two_layer_sgd_step_matches_autodiff(d, k, n):
    rng = np.random.default_rng(d)
    W1, W2, G = rng.standard_normal((d, k)), rng.standard_normal((k, n)), rng.standard_normal((d, n))
    g1, g2 = jax.grad(lambda a, b: jnp.sum(jnp.asarray(G) * (a @ b)), argnums=(0, 1))(jnp.asarray(W1),
                                                                                      jnp.asarray(W2))
    assert g1.dtype == jnp.float64
    assert_close(two_layer_sgd_step(W1, W2, G, 0.3),
                 (W1 - 0.3 * np.asarray(g1)) @ (W2 - 0.3 * np.asarray(g2)), rtol=1e-12)


@SETTINGS
@given(case(), st.floats(1e-4, 1.0))
def test_single_layer_sgd_step_changes_only_queried_columns(c, eta):
    W1, W2, G = c
    W = W1 @ W2
    out = single_layer_sgd_step(W, G, eta)
    ref = W.copy()
    for j in range(W.shape[1]):
        if np.any(G[:, j] != 0):
            ref[:, j] = W[:, j] - eta * G[:, j]
    np.testing.assert_array_equal(out, ref)


def test_thin_spectral_update_through_the_gram_route():
    """n > 8192 takes the CholeskyQR route; compare with Eq. 6 (and with LAPACK's thin SVD)."""
    rng = np.random.default_rng(3)
    d, k, n = 6, 16, 9000
    W1, W2 = rng.standard_normal((d, k)), rng.uniform(-1, 1, (k, n))
    G = np.zeros((d, n))
    G[:, rng.choice(n, 32, replace=False)] = rng.standard_normal((d, 32))
    ref = first_order_update(W1, W2, G)
    assert_close(spectral_update(W1, W2, G), ref, rtol=1e-12)
    assert_close(spectral_update(W1, W2, G, svd_method="lapack"), ref, rtol=1e-12)
    W2[3] *= 1e3  # two CholeskyQR passes
    assert_close(spectral_update(W1, W2, G), first_order_update(W1, W2, G), rtol=1e-12)


def test_dense_refuses_large_n_without_allocating(monkeypatch):
    d, k, n = 2, 3, DENSE_MAX_N + 1
    W1, W2, G = np.ones((d, k)), np.ones((k, n)), np.ones((d, n))

    def no_factoring(*a, **kw):  # at n = 10^7 LAPACK's SVD of W2 alone exhausted 24 GB before the refusal
        raise AssertionError("factored W2 before refusing")

    monkeypatch.setattr(theory.updates, "svd_factors", no_factoring)
    with pytest.raises(ValueError, match=r"n <= 4096"):
        spectral_update(W1, W2, G, method="dense")
    with pytest.raises(ValueError, match="method must be"):
        spectral_update(W1, W2, G, method="fast")


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"G must be d x n = \(2, 5\)"):
        first_order_update(np.ones((2, 3)), np.ones((3, 5)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="same d x n shape"):
        single_layer_sgd_step(np.ones((2, 3)), np.ones((3, 2)), 0.1)
