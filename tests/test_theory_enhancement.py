"""theory.enhancement: measured enhancement factors of real optimizer steps, against numpy transcriptions."""

import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.enhancement import (
    adagrad_first_step_prediction,
    make_optimizer,
    measured_enhancement,
    single_layer_step,
    two_layer_step,
)

pytestmark = pytest.mark.usefixtures("float64")  # conftest: x64 for this module's tests only


def case(d, k, n, seed, b=3):
    rng = np.random.default_rng(seed)
    W1, W2 = 0.5 * rng.standard_normal((d, k)), rng.standard_normal((k, n)) / np.sqrt(n)
    G = np.zeros((d, n))
    G[:, rng.choice(n, min(b, n), replace=False)] = rng.standard_normal((d, min(b, n)))
    return W1, W2, G


def numpy_torch_adagrad_step(p, g, lr, eps=1e-10):
    """torch.optim.Adagrad, first step: state_sum = 0 + g^2; p - lr g / (sqrt(state_sum) + eps)."""
    return p - lr * g / (np.sqrt(g * g) + eps)


def reference_coordinates(W1, W2, D):
    """u_i^T D v_j over the full SVD bases (U d x d, V n x n)."""
    U = np.linalg.svd(W1, full_matrices=True)[0]
    Vt = np.linalg.svd(W2, full_matrices=True)[2]
    return U.T @ D @ Vt.T


@settings(max_examples=6, deadline=None)  # each new shape compiles the optimizer's ops
@given(st.integers(1, 12), st.integers(1, 12), st.integers(2, 30), st.integers(0, 2**31 - 1))
def test_sgd_measured_factors_match_theory_to_first_order(d, k, n, seed):
    W1, W2, G = case(d, k, n, seed)
    eta = 1e-6
    m = measured_enhancement(W1, W2, G, "sgd", lr=eta)
    W = W1 @ W2
    # Independent: exact two-layer SGD step by hand, coordinates over the full bases, ratio to -eta g_ij.
    D2 = (W1 - eta * G @ W2.T) @ (W2 - eta * W1.T @ G) - W
    c = reference_coordinates(W1, W2, D2)
    g = reference_coordinates(W1, W2, G)
    s1 = np.zeros(d)
    s1[: min(d, k)] = np.linalg.svd(W1, compute_uv=False)
    s2 = np.zeros(n)
    s2[: min(k, n)] = np.linalg.svd(W2, compute_uv=False)
    E = s1[:, None] ** 2 + s2[None, :] ** 2
    r = min(k, n)
    np.testing.assert_allclose(m.theory, E[:, :r], rtol=1e-10, atol=1e-12)
    ok = np.abs(g[:, :r]) > 1e-3 * np.abs(g).max()
    ref = c[:, :r] / (-eta * g[:, :r])
    np.testing.assert_allclose(m.measured[ok], ref[ok], rtol=1e-6, atol=1e-6)
    # O(eta): the ratios equal the theoretical factors to ~eta |t_ij / g_ij|.
    np.testing.assert_allclose(m.measured[ok], E[:, :r][ok], rtol=1e-3, atol=1e-3)
    finite = np.isfinite(m.complement)
    np.testing.assert_allclose(m.complement[finite], s1[finite] ** 2, rtol=1e-3, atol=1e-3)


def test_sgd_deviation_is_linear_in_eta():
    W1, W2, G = case(6, 10, 40, 0)
    dev = [np.median(measured_enhancement(W1, W2, G, "sgd", lr=lr).relative_deviation()) for lr in (1e-3, 1e-4)]
    assert 9.9 < dev[0] / dev[1] < 10.1


def test_adagrad_steps_are_torch_adagrad():
    d, k, n = 4, 6, 20
    W1, W2, G = case(d, k, n, 1)
    lr = 0.0625  # exact in float32: mlet_jax.optim.torch_adagrad computes its lr in float32
    tx = make_optimizer("adagrad", lr)
    table, proj = numpy_torch_adagrad_step(W2.T, G.T @ W1, lr), numpy_torch_adagrad_step(W1.T, W2 @ G.T, lr)
    np.testing.assert_allclose(two_layer_step(W1, W2, G, tx), proj.T @ table.T, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(single_layer_step(W1 @ W2, G, tx), numpy_torch_adagrad_step(W1 @ W2, G, lr),
                               rtol=1e-12, atol=1e-15)


def test_adagrad_first_step_prediction_is_first_order():
    W1, W2, G = case(8, 32, 200, 2, b=4)
    W = W1 @ W2
    errs = []
    for lr in (1e-3, 1e-4):
        D = two_layer_step(W1, W2, G, make_optimizer("adagrad", lr)) - W
        P = adagrad_first_step_prediction(W1, W2, G, lr)
        # Literal transcription of the prediction for one column sum.
        ref = -lr * (np.sign(G @ W2.T) @ W2 + W1 @ np.sign(W1.T @ G))
        np.testing.assert_allclose(P, ref, rtol=1e-14)
        errs.append(np.linalg.norm(D - P) / np.linalg.norm(P))
    assert errs[0] < 1e-2 and 9 < errs[0] / errs[1] < 11


def test_adagrad_step_grows_with_k_sigma_init():
    """Under Adagrad the queried column's step relative to the single-layer one grows ~linearly in k sigma_init."""
    rng = np.random.default_rng(3)
    d, n = 8, 500
    ratios = {}
    for k in (16, 64):
        W1 = 0.25 * rng.standard_normal((d, k))
        W2 = rng.uniform(-1, 1, (k, n)) / np.sqrt(n)
        G = np.zeros((d, n))
        G[:, :4] = rng.standard_normal((d, 4))
        ratios[k] = measured_enhancement(W1, W2, G, "adagrad", lr=0.02).step_ratio
    assert 2.5 < ratios[64] / ratios[16] < 5.0


def test_any_optax_transformation_and_bad_input():
    W1, W2, G = case(3, 5, 10, 4)
    m = measured_enhancement(W1, W2, G, optax.sgd(1e-6))
    m_ref = measured_enhancement(W1, W2, G, "sgd", lr=1e-6)
    np.testing.assert_allclose(m.measured, m_ref.measured, rtol=1e-9, equal_nan=True)
    assert m.changed_columns == 10
    with pytest.raises(ValueError, match="optimizer must be"):
        make_optimizer("rmsprop", 0.1)
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        make_optimizer(3.0, 0.1)
