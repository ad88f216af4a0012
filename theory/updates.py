"""Embedding updates of single-layer and two-layer (MLET) training, in the paper's notation (numpy float64).

* :func:`single_layer_sgd_step`: ``W - eta G`` (Eq. 4).
* :func:`two_layer_sgd_step`: ``(W1 - eta G W2^T)(W2 - eta W1^T G)`` (Eq. 9 with the gradients of Eqs. 7 and 8),
  exactly: ``W - eta (W1 W1^T G + G W2^T W2) + eta^2 G W2^T W1^T G``.
* :func:`first_order_update`: ``W1 W1^T G + G W2^T W2`` (Eq. 6 without ``-eta``).
* :func:`spectral_update`: ``sum_ij g_ij (sigma1(i)^2 + sigma2(j)^2) u_i v_j^T`` (Eq. 13 without ``-eta``), which the
  Main Theorem says equals :func:`first_order_update`.

References:
    Deng et al., "Enhancing cross-category learning in recommendation systems with multi-layer embedding
    training" (MLET), arXiv:2309.15881, Section 2.2, Section 2.3 and Appendix A.2.
"""

from __future__ import annotations

import numpy as np

from theory.spectral import (
    DENSE_MAX_N,
    as_f64,
    check_shapes,
    coefficients,
    dot_t,
    full_right_vectors,
    right_basis,
    svd_factors,
)


def single_layer_sgd_step(W, G, eta: float) -> np.ndarray:
    """One SGD step of a single-layer table: ``W - eta G`` (Eq. 4).

    References:
        MLET, arXiv:2309.15881, Eq. 4.
    """
    W, G = as_f64("W", W), as_f64("G", G)
    if W.shape != G.shape:
        raise ValueError(f"W {W.shape} and G {G.shape} must have the same d x n shape")
    return W - eta * G


def two_layer_sgd_step(W1, W2, G, eta: float) -> np.ndarray:
    """The table after one exact SGD step of both factors: ``W1(t+1) W2(t+1)`` (Eq. 9).

    ``dL/dW1 = G W2^T`` (Eq. 7) and ``dL/dW2 = W1^T G`` (Eq. 8), so the result is
    ``(W1 - eta G W2^T)(W2 - eta W1^T G)``, with no term dropped.

    References:
        MLET, arXiv:2309.15881, Eqs. 7-9.
    """
    W1, W2, G = as_f64("W1", W1), as_f64("W2", W2), as_f64("G", G)
    check_shapes(W1, W2, G)
    return (W1 - eta * (G @ W2.T)) @ (W2 - eta * (W1.T @ G))


def first_order_update(W1, W2, G) -> np.ndarray:
    """``W1 W1^T G + G W2^T W2``: Eq. 6's update direction (the step is ``-eta`` times this).

    Computed as ``(W1 W1^T) G + (G W2^T) W2`` in ``O(d k n)`` time without forming ``W2^T W2`` (n x n); ``G W2^T``
    touches only the non-zero columns of a batch gradient.

    References:
        MLET, arXiv:2309.15881, Eq. 6.
    """
    W1, W2, G = as_f64("W1", W1), as_f64("W2", W2), as_f64("G", G)
    check_shapes(W1, W2, G)
    return (W1 @ W1.T) @ G + dot_t(G, W2) @ W2


def second_order_term(W1, W2, G) -> np.ndarray:
    """``G W2^T W1^T G``: the exact step minus the first-order step is ``eta^2`` times this (expand Eq. 9)."""
    W1, W2, G = as_f64("W1", W1), as_f64("W2", W2), as_f64("G", G)
    check_shapes(W1, W2, G)
    return dot_t(G, W2) @ (W1.T @ G)


def spectral_update(W1, W2, G, method: str = "thin", svd_method: str = "auto") -> np.ndarray:
    """``sum_ij g_ij (sigma1(i)^2 + sigma2(j)^2) u_i v_j^T``: Eq. 13's update direction.

    ``g_ij = u_i^T G v_j`` are the coordinates of ``G`` in the orthonormal basis ``{u_i v_j^T}`` (Claim 1, Eq. 11),
    re-weighted by the enhancement factors. Two exact ways to sum it:

    * ``method="dense"``: brute force with the full ``n x n`` ``V``: ``U (C * E) V^T`` with ``C = U^T G V`` and
      ``E[i, j] = sigma1(i)^2 + sigma2(j)^2``. Refuses ``n > theory.spectral.DENSE_MAX_N`` (4096) with a ValueError.
    * ``method="thin"``: only ``V_r`` (n x r, ``r = min(k, n)``). Split ``U^T G = C_r V_r^T + R`` with
      ``C_r = U^T G V_r`` the coefficients on ``v_1..v_r`` and ``R = U^T G (I - V_r V_r^T)`` the rest. Every
      ``v_j`` with ``j > r`` spans the null space of ``W2``, so ``sigma2(j) = 0`` and its factor is ``sigma1(i)^2``
      whatever completion of ``V_r`` one picks, hence
      ``U [ (C_r * E_r) V_r^T + diag(sigma1^2) R ]``, exact in ``O(n (d + k))`` memory. For ``n > 8192`` the
      ``V_r`` comes from CholeskyQR of ``W2^T`` and stays implicit (``V_r = W2^T M``, ``M`` k x k) unless
      ``cond(W2) > 30`` (then one ``k x n`` re-orthogonalized copy); see :class:`theory.spectral.RightBasis`.

    Args:
        W1: ``d x k``. W2: ``k x n``. G: ``d x n``.
        method: ``"thin"`` or ``"dense"``.
        svd_method: how the thin form factors ``W2``; see :func:`theory.spectral.thin_right_svd`.
    Returns:
        ``d x n`` float64.

    References:
        MLET, arXiv:2309.15881, Eq. 13 and Appendix A.2.
    """
    W1, W2, G = as_f64("W1", W1), as_f64("W2", W2), as_f64("G", G)
    check_shapes(W1, W2, G)
    if method == "dense":
        if W2.shape[1] > DENSE_MAX_N:  # before any factoring: LAPACK's full SVD of a wide W2 alone can exhaust memory
            raise ValueError(f"method='dense' builds the full n x n V, so it needs n <= {DENSE_MAX_N}, got "
                             f"n = {W2.shape[1]}. Use method='thin', which is exact in O(n k) memory.")
        f = svd_factors(W1, W2, method="lapack")
        V, sigma2 = full_right_vectors(W2)
        E = f.sigma1[:, None] ** 2 + sigma2[None, :] ** 2
        return f.U @ (coefficients(f.U, V, G) * E) @ V.T
    if method != "thin":
        raise ValueError(f"method must be 'thin' or 'dense', got {method!r}")
    U, s1, _ = np.linalg.svd(W1, full_matrices=True)
    s1sq = np.zeros(W1.shape[0])
    s1sq[: s1.size] = s1**2
    basis = right_basis(W2, svd_method)
    Gu = U.T @ G
    C = basis.right(Gu)  # g_ij = u_i^T G v_j for j <= r
    E = s1sq[:, None] + basis.sigma2[None, :] ** 2
    # (C * E) V_r^T + diag(sigma1^2) (Gu - C V_r^T), regrouped so that V_r is applied once:
    # the j > r coefficients R = Gu - C V_r^T all carry the factor sigma1(i)^2.
    return U @ (basis.left(C * E - s1sq[:, None] * C) + s1sq[:, None] * Gu)
