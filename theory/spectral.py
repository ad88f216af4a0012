"""SVDs of the MLET factors, enhancement factors and the coefficients g_ij, in the paper's notation.

Notation (Section 2.3 of the paper): ``W = W1 W2`` with ``W1`` of shape ``d x k`` and ``W2`` of shape ``k x n``;
``G = dL/dW`` is ``d x n``. The SVDs are ``W1 = U S1 X^T`` and ``W2 = Y S2 V^T`` with ``U`` (d x d) and ``V`` (n x n)
orthogonal, ``sigma1(i) = 0`` for ``i > rank(W1)`` and ``sigma2(j) = 0`` for ``j > rank(W2)``. The enhancement factor of
direction ``u_i v_j^T`` is ``sigma1(i)^2 + sigma2(j)^2`` (Eq. 13).

``V`` is never built here: only its first ``r = min(k, n)`` columns ``V_r`` (the row space of ``W2``) are. Every
column ``v_j`` with ``j > r`` has ``sigma2(j) = 0``, so the enhancement factors of all those directions equal
``sigma1(i)^2`` and any orthonormal completion of ``V_r`` gives the same update. This is what makes the thin form
exact in ``O(n k)`` memory.

All arrays are numpy float64.

References:
    Deng et al., "Enhancing cross-category learning in recommendation systems with multi-layer embedding
    training" (MLET), arXiv:2309.15881, Section 2.3 and Appendix A.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# full_right_vectors (the dense spectral form of theory.updates) builds the full n x n V (128 MiB at n = 4096) and
# LAPACK's full SVD of W2 (1.6 s at n = 4096, k = 64 on the project's 2-core box); beyond this it refuses rather
# than exhaust memory.
DENSE_MAX_N = 4096

# Above this many columns a wide W2 is factored through its k x k Gram matrix (Cholesky QR) instead of LAPACK's SVD,
# which is ~100x slower on a 128 x 10^6 matrix on this machine (88 s versus ~2 s).
LAPACK_MAX_N = 8192
# CholeskyQR loses orthogonality like eps * cond(W2)^2: one pass when cond <= this, two passes up to
# CHOLQR_MAX_COND, LAPACK beyond (rank-deficient or badly conditioned W2).
CHOLQR_ONE_PASS_COND = 30.0
CHOLQR_MAX_COND = 1e6


class SVDFactors(NamedTuple):
    """The SVD pieces that Eq. 13 needs.

    Attributes:
        U: ``d x d`` orthogonal, the left singular vectors of ``W1``.
        sigma1: length ``d``, singular values of ``W1`` in descending order, zero-padded past ``min(d, k)``.
        V: ``n x r`` with orthonormal columns, ``r = min(k, n)``: the first ``r`` right singular vectors of ``W2``
            (the thin form of the paper's ``n x n`` ``V``).
        sigma2: length ``r``, singular values of ``W2`` in descending order (``sigma2(j) = 0`` for ``j > r``).
    """

    U: np.ndarray
    sigma1: np.ndarray
    V: np.ndarray
    sigma2: np.ndarray


def as_f64(name: str, x, ndim: int = 2) -> np.ndarray:
    """``x`` as a float64 numpy array with ``ndim`` dimensions, or a ValueError naming ``name``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def check_shapes(W1: np.ndarray, W2: np.ndarray, G: np.ndarray | None = None) -> tuple[int, int, int]:
    """``(d, k, n)`` of ``W1`` (d x k), ``W2`` (k x n) and ``G`` (d x n), or a ValueError."""
    d, k = W1.shape
    k2, n = W2.shape
    if k != k2:
        raise ValueError(f"W1 is {W1.shape} (d x k) but W2 is {W2.shape} (k x n): inner dimensions differ")
    if G is not None and G.shape != (d, n):
        raise ValueError(f"G must be d x n = {(d, n)} like W = W1 W2, got {G.shape}")
    return d, k, n


class RightBasis(NamedTuple):
    """The thin ``V_r`` (n x r) of ``W2`` kept implicit as ``V_r^T = M^T B`` with ``B`` a stored ``m x n`` array.

    LAPACK gives ``B = V_r^T`` and ``M = I``; one CholeskyQR pass gives ``B = W2`` itself and ``M = R^-1 P``, so
    ``V_r`` is never materialized and applying it costs two ``O(n k)``-memory products.
    """

    B: np.ndarray
    M: np.ndarray
    sigma2: np.ndarray

    def right(self, X: np.ndarray) -> np.ndarray:
        """``X V_r`` (``X``: d x n -> d x r), touching only the non-zero columns of a column-sparse ``X``."""
        return dot_t(X, self.B) @ self.M

    def left(self, C: np.ndarray) -> np.ndarray:
        """``C V_r^T`` (``C``: d x r -> d x n)."""
        return (C @ self.M.T) @ self.B

    def explicit(self) -> np.ndarray:
        """``V_r`` itself, ``n x r`` (as the transpose of a row-major ``r x n`` array)."""
        return (self.M.T @ self.B).T


def nonzero_columns(X: np.ndarray) -> np.ndarray | None:
    """Indices of the non-zero columns of ``X`` when fewer than a quarter are (a batch gradient), else None."""
    cols = np.flatnonzero(np.any(X != 0, axis=0))
    return cols if cols.size * 4 < X.shape[1] else None


def dot_t(X: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``X B^T`` for ``X`` (d x n) and row-major ``B`` (m x n), in ``O(d m b)`` when ``X`` has ``b`` non-zero
    columns. Exact: the skipped columns contribute exact zeros."""
    cols = nonzero_columns(X)
    if cols is None:
        return (B @ X.T).T
    return X[:, cols] @ B[:, cols].T


def _cholesky_qr(W2: np.ndarray) -> RightBasis | None:
    """Thin right SVD of a wide ``W2`` by CholeskyQR(2) of ``A = W2^T``; None if ``cond(W2) > CHOLQR_MAX_COND``.

    ``A = Q R`` with ``Q = A R^-1``; ``R = P S Z^T`` gives ``A = (Q P) S Z^T``, so ``V_r = A R^-1 P`` and
    ``sigma2 = S``. A second pass re-orthogonalizes ``Q`` when ``cond(R) > CHOLQR_ONE_PASS_COND``.
    """
    k = W2.shape[0]
    try:
        R1 = np.linalg.cholesky(W2 @ W2.T).T
    except np.linalg.LinAlgError:
        return None
    cond = np.linalg.cond(R1)
    if not np.isfinite(cond) or cond > CHOLQR_MAX_COND:
        return None
    B1 = np.linalg.solve(R1, np.eye(k))
    if cond <= CHOLQR_ONE_PASS_COND:
        P, s, _ = np.linalg.svd(R1)
        return RightBasis(W2, B1 @ P, s)
    Q1t = B1.T @ W2  # Q1^T, k x n row-major
    try:
        R2 = np.linalg.cholesky(Q1t @ Q1t.T).T
    except np.linalg.LinAlgError:
        return None
    P, s, _ = np.linalg.svd(R2 @ R1)
    return RightBasis(Q1t, np.linalg.solve(R2, P), s)


def right_basis(W2, method: str = "auto") -> RightBasis:
    """The first ``r = min(k, n)`` right singular vectors and values of ``W2`` (k x n), as a :class:`RightBasis`.

    Args:
        W2: the ``k x n`` factor.
        method: ``"lapack"`` (``numpy.linalg.svd``), ``"cholqr"`` (CholeskyQR of ``W2^T`` through the ``k x k`` Gram
            matrix, then the SVD of the ``k x k`` triangle: ``O(n k^2)`` time, no ``n``-sized allocation for
            ``cond(W2) <= 30``; falls back to LAPACK when ``cond(W2) > 1e6`` or ``n < k``) or ``"auto"``
            (``"cholqr"`` when ``n > LAPACK_MAX_N`` and ``n >= 4 k``, else LAPACK).
    """
    W2 = as_f64("W2", W2)
    k, n = W2.shape
    if method not in ("auto", "lapack", "cholqr"):
        raise ValueError(f"method must be 'auto', 'lapack' or 'cholqr', got {method!r}")
    if n >= k and (method == "cholqr" or (method == "auto" and n > LAPACK_MAX_N and n >= 4 * k)):
        basis = _cholesky_qr(W2)
        if basis is not None:
            return basis
    _, s, Vt = np.linalg.svd(W2, full_matrices=False)
    return RightBasis(Vt, np.eye(s.size), s)


def thin_right_svd(W2, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``(V_r, sigma2)``: the first ``r = min(k, n)`` right singular vectors (n x r) and values of ``W2`` (k x n)."""
    basis = right_basis(W2, method)
    return basis.explicit(), basis.sigma2


def svd_factors(W1, W2, method: str = "auto") -> SVDFactors:
    """SVDs of the two MLET factors, in the form Eq. 13 uses: ``U``, ``sigma1`` (length ``d``, zero-padded), and the
    thin ``V_r`` (n x r) and ``sigma2`` (length ``r = min(k, n)``).

    ``W1 = U S1 X^T`` and ``W2 = Y S2 V^T`` (Section 2.3); ``X`` and ``Y`` never enter the update and are not returned.

    Args:
        W1: ``d x k``. W2: ``k x n``.
        method: how to factor ``W2``; see :func:`thin_right_svd`.

    References:
        MLET, arXiv:2309.15881, Section 2.3.
    """
    W1, W2 = as_f64("W1", W1), as_f64("W2", W2)
    d, k, _ = check_shapes(W1, W2)
    U, s1, _ = np.linalg.svd(W1, full_matrices=True)
    sigma1 = np.zeros(d)
    sigma1[: s1.size] = s1
    V, sigma2 = thin_right_svd(W2, method)
    return SVDFactors(U, sigma1, V, sigma2)


def full_right_vectors(W2, max_n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(V, sigma2)`` with the full ``n x n`` orthogonal ``V`` and ``sigma2`` zero-padded to length ``n``.

    Brute force for small ``n`` only: refuses ``n > max_n`` (default :data:`DENSE_MAX_N`).
    """
    W2 = as_f64("W2", W2)
    k, n = W2.shape
    limit = DENSE_MAX_N if max_n is None else max_n
    if n > limit:
        raise ValueError(
            f"the dense method builds the full n x n V ({n} x {n} float64 = {8 * n * n / 2**30:.1f} GiB); it accepts "
            f"n <= {limit}. Use method='thin', which is exact in O(n k) memory."
        )
    _, s, Vt = np.linalg.svd(W2, full_matrices=True)
    sigma2 = np.zeros(n)
    sigma2[: s.size] = s
    return Vt.T, sigma2


def enhancement_factors(W1, W2, method: str = "auto") -> np.ndarray:
    """The ``d x n`` matrix of enhancement factors ``E[i, j] = sigma1(i)^2 + sigma2(j)^2`` (Eq. 13).

    Column ``j`` belongs to ``v_j``, the ``j``-th right singular vector of ``W2`` (descending ``sigma2``); columns
    ``j >= r = min(k, n)`` belong to the null space of ``W2`` and equal ``sigma1^2``.

    References:
        MLET, arXiv:2309.15881, Eq. 13 and Section 2.4.
    """
    f = svd_factors(W1, W2, method)
    n = f.V.shape[0]
    s2 = np.zeros(n)
    s2[: f.sigma2.size] = f.sigma2
    return f.sigma1[:, None] ** 2 + s2[None, :] ** 2


def coefficients(U: np.ndarray, V: np.ndarray, G) -> np.ndarray:
    """``g_ij = u_i^T G v_j`` (Eq. 11: ``vec(G) = sum_ij g_ij v_j (x) u_i``), the ``d x m`` matrix ``U^T G V`` for
    whichever ``m`` columns of ``V`` are given (all ``n`` for the dense form, ``r`` for the thin one)."""
    return U.T @ as_f64("G", G) @ V


def numerical_rank(s: np.ndarray, shape: tuple[int, int]) -> int:
    """Singular values above ``max(shape) * eps * s_max`` (numpy's ``matrix_rank`` rule)."""
    if s.size == 0 or s.max() == 0:
        return 0
    return int(np.sum(s > max(shape) * np.finfo(np.float64).eps * s.max()))


def count_nonzero_enhancement_factors(d: int, k: int, n: int) -> int:
    """The paper's closed-form count of non-zero enhancement factors for generic (full-rank) factors.

    ``d n`` for ``k >= d``; ``k n + (d - k) k`` for ``k < d`` (Section 2.4). The paper's ``k < d`` count assumes
    ``n >= k``; in general it is ``r1 n + (d - r1) r2`` with ``r1 = min(d, k)``, ``r2 = min(k, n)``, which this returns
    (and which equals the paper's expressions whenever ``n >= k``).

    References:
        MLET, arXiv:2309.15881, Section 2.4.
    """
    for name, v in (("d", d), ("k", k), ("n", n)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    r1, r2 = min(d, k), min(k, n)
    return r1 * n + (d - r1) * r2


def measured_nonzero_enhancement_factors(W1, W2, method: str = "auto") -> int:
    """Count the non-zero entries of :func:`enhancement_factors` of actual matrices, in ``O(d k)`` after the SVDs.

    A singular value counts as non-zero above numpy's ``matrix_rank`` threshold; ``sigma1(i)^2 + sigma2(j)^2`` is
    non-zero when either is. The columns ``j >= r`` (null space of ``W2``) are counted without being built.
    """
    W1, W2 = as_f64("W1", W1), as_f64("W2", W2)
    d, k, n = check_shapes(W1, W2)
    f = svd_factors(W1, W2, method)
    rank1 = numerical_rank(f.sigma1, W1.shape)
    rank2 = numerical_rank(f.sigma2, W2.shape)
    nz1 = np.arange(d) < rank1
    nz2 = np.arange(f.sigma2.size) < rank2
    in_row_space = int(np.sum(nz1[:, None] | nz2[None, :]))
    return in_row_space + int(nz1.sum()) * (n - f.sigma2.size)
