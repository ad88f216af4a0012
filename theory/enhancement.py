"""Measured enhancement factors of one real optimizer step: SGD, torch Adagrad, or any optax transformation.

The Main Theorem (Eq. 13) says that one SGD step of ``W = W1 W2`` moves ``W`` along ``u_i v_j^T`` by
``-eta g_ij (sigma1(i)^2 + sigma2(j)^2) + O(eta^2)`` where the single-layer step (Eq. 12) moves it by ``-eta g_ij``.
:func:`measured_enhancement` measures that ratio for an actual step of any optimizer: it applies the optimizer to
the factors (in :mod:`mlet_jax`'s row-major layout: ``table = W2^T``, ``projection = W1^T``) with the gradients of
Eqs. 7-8, and to a single-layer table ``W`` with gradient ``G``, and divides the coordinates of the two changes of
``W`` in the basis ``{u_i v_j^T}``:

``measured[i, j] = (u_i^T dW_two v_j) / (u_i^T dW_single v_j)`` for ``j <= r = min(k, n)``.

The directions ``v_j``, ``j > r``, span the null space of ``W2``; any basis of it is valid and all of them have the
theoretical factor ``sigma1(i)^2``, so that block is summarized per ``i`` by the least-squares ratio
``<c_i, s_i> / <s_i, s_i>`` of the two changes projected onto it (``complement``).

For SGD ``measured - theory = -eta t_ij / g_ij`` exactly, with ``t_ij`` the coordinates of ``G W2^T W1^T G``: the
deviation is ``O(eta)``. Adagrad normalizes each parameter's step, so its factors are not ``sigma1^2 + sigma2^2``:
on the first step of a factorized row every coordinate moves by ``~lr``, which in ``W`` adds up to
``~lr (||w2_c||_1 + k sigma_init sqrt(2/pi))`` along the queried column ``c`` instead of the single-layer ``lr``.

References:
    Deng et al., "Enhancing cross-category learning in recommendation systems with multi-layer embedding
    training" (MLET), arXiv:2309.15881, Eqs. 7-13.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import numpy as np
import optax

from mlet_jax import optim
from theory.spectral import as_f64, check_shapes, svd_factors


@contextlib.contextmanager
def x64():
    """JAX with 64-bit types for the duration (restored afterwards)."""
    with jax.enable_x64(True):
        yield


def make_optimizer(optimizer, lr: float):
    """An optax ``GradientTransformation``: ``"sgd"`` / ``"adagrad"`` are PyTorch's rules from
    :mod:`mlet_jax.optim` (``torch_sgd``, ``torch_adagrad``: accumulator from 0, eps 1e-10 outside the root); any
    other value must already be an optax transformation."""
    if isinstance(optimizer, str):
        rules = {"sgd": optim.torch_sgd, "adagrad": optim.torch_adagrad}
        if optimizer not in rules:
            raise ValueError(f"optimizer must be 'sgd', 'adagrad' or an optax transformation, got {optimizer!r}")
        return rules[optimizer](lr)
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be a name or an optax.GradientTransformation, got {type(optimizer)}")
    return optimizer


def optimizer_step(tx, params: dict, grads: dict, steps: int = 1) -> dict:
    """Parameters after ``steps`` updates of ``tx`` with the same gradients (float64 numpy in and out)."""
    with x64():
        p = {k: jax.numpy.asarray(v, jax.numpy.float64) for k, v in params.items()}
        g = {k: jax.numpy.asarray(v, jax.numpy.float64) for k, v in grads.items()}
        state = tx.init(p)
        for _ in range(steps):
            updates, state = tx.update(g, state, p)
            p = optax.apply_updates(p, updates)
        out = {k: np.asarray(v) for k, v in p.items()}
    for k, v in out.items():
        if v.dtype != np.float64:
            raise TypeError(f"the optimizer returned {k} as {v.dtype}; theory needs float64 updates")
    return out


def two_layer_step(W1, W2, G, tx) -> np.ndarray:
    """``W1' W2'`` after one step of ``tx`` on the factors, in mlet_jax's layout (``table = W2^T`` n x k,
    ``projection = W1^T`` k x d) with the gradients of Eqs. 7-8 (``G^T W1`` and ``W2 G^T``)."""
    out = optimizer_step(tx, {"table": W2.T, "projection": W1.T}, {"table": G.T @ W1, "projection": W2 @ G.T})
    return out["projection"].T @ out["table"].T


def single_layer_step(W, G, tx) -> np.ndarray:
    """``W'`` after one step of ``tx`` on a single-layer table (layout ``table = W^T``, gradient ``G^T``)."""
    return optimizer_step(tx, {"table": W.T}, {"table": G.T})["table"].T


@dataclasses.dataclass
class MeasuredEnhancement:
    """Measured versus theoretical enhancement factors of one optimizer step.

    Attributes:
        measured: ``d x r`` ratios on ``u_i v_j^T``, ``j <= r``; NaN where the single-layer coordinate is below
            ``rtol`` times its largest (the ratio is undefined there).
        theory: ``d x r`` ``sigma1(i)^2 + sigma2(j)^2``.
        complement: length ``d``, least-squares ratio on the null space of ``W2`` (NaN if the single-layer step has
            no component there); theory: ``sigma1^2``.
        theory_complement: ``sigma1^2``.
        step_ratio: ``||dW_two|| / ||dW_single||`` on the queried columns.
        changed_columns: columns of ``W`` moved by the two-layer step (the single-layer step moves the queried ones).
    """

    measured: np.ndarray
    theory: np.ndarray
    complement: np.ndarray
    theory_complement: np.ndarray
    step_ratio: float
    changed_columns: int

    def relative_deviation(self) -> np.ndarray:
        """``|measured / theory - 1|`` over the defined entries (row-space block and complement), flattened."""
        m = np.concatenate([self.measured.ravel(), self.complement])
        t = np.concatenate([self.theory.ravel(), self.theory_complement])
        ok = np.isfinite(m) & (t > 0)
        return np.abs(m[ok] / t[ok] - 1.0)

    def summary(self) -> dict[str, float]:
        """Medians and spread of the measured factors and of their ratio to the theory."""
        m = self.measured[np.isfinite(self.measured)]
        t = self.theory[np.isfinite(self.measured)]
        dev = self.relative_deviation()
        return {"median_measured": float(np.median(m)) if m.size else float("nan"),
                "median_theory": float(np.median(t)) if t.size else float("nan"),
                "median_ratio": float(np.median(m / t)) if m.size else float("nan"),
                "median_rel_dev": float(np.median(dev)) if dev.size else float("nan"),
                "p90_rel_dev": float(np.quantile(dev, 0.9)) if dev.size else float("nan"),
                "step_ratio": self.step_ratio, "changed_columns": self.changed_columns}


def measured_enhancement(W1, W2, G, optimizer="sgd", lr: float = 1e-3, rtol: float = 1e-6) -> MeasuredEnhancement:
    """Enhancement factors measured from one real optimizer step on the factorized parameters.

    Args:
        W1: ``d x k``. W2: ``k x n``. G: ``d x n``, ``dL/dW`` (the factors' gradients follow by Eqs. 7-8).
        optimizer: ``"sgd"``, ``"adagrad"`` (PyTorch semantics, :mod:`mlet_jax.optim`) or any optax
            ``GradientTransformation`` (its learning rate is its own; ``lr`` is ignored then).
        lr: learning rate for the named optimizers.
        rtol: single-layer coordinates below ``rtol * max`` give NaN ratios.
    Returns:
        :class:`MeasuredEnhancement`. Memory ``O(n (d + k))``: only the thin ``V_r`` is built.

    References:
        MLET, arXiv:2309.15881, Eqs. 12-13.
    """
    W1, W2, G = as_f64("W1", W1), as_f64("W2", W2), as_f64("G", G)
    check_shapes(W1, W2, G)
    tx = make_optimizer(optimizer, lr)
    W = W1 @ W2
    d_two = two_layer_step(W1, W2, G, tx) - W
    d_one = single_layer_step(W, G, tx) - W
    f = svd_factors(W1, W2)
    U, V = f.U, f.V

    def coords(D):
        Du = U.T @ D
        C = Du @ V
        return C, Du - C @ V.T

    c, c_rest = coords(d_two)
    s, s_rest = coords(d_one)
    with np.errstate(divide="ignore", invalid="ignore"):
        measured = np.where(np.abs(s) > rtol * np.abs(s).max(initial=0.0), c / s, np.nan)
        # Defined only where the null space of W2 exists (n > r) and the single-layer step has a component in it
        # above rounding of the whole step.
        s_norm2 = np.sum(s_rest**2, axis=1)
        has_rest = (V.shape[0] > V.shape[1]) & (np.sqrt(s_norm2) > rtol * np.linalg.norm(d_one))
        complement = np.where(has_rest, np.sum(c_rest * s_rest, axis=1) / s_norm2, np.nan)
    queried = np.any(G != 0, axis=0)
    den = float(np.linalg.norm(d_one[:, queried]))
    return MeasuredEnhancement(
        measured=measured, theory=f.sigma1[:, None] ** 2 + f.sigma2[None, :] ** 2, complement=complement,
        theory_complement=f.sigma1**2, step_ratio=float(np.linalg.norm(d_two[:, queried])) / den if den else np.nan,
        changed_columns=int(np.sum(np.any(d_two != 0, axis=0))))


def adagrad_first_step_prediction(W1, W2, G, lr: float) -> np.ndarray:
    """First-order change of ``W`` in the first torch-Adagrad step of the factors: each parameter moves by
    ``-lr sign(grad)`` (accumulator ``grad^2``, eps negligible), so
    ``dW = -lr (sign(G W2^T) W2 + W1 sign(W1^T G)) + O(lr^2)``, against ``-lr sign(G)`` for a single-layer table.

    Every column moves through ``W2`` (sparsity broken as with SGD), and the queried column ``c`` moves by
    ``-lr (||w2_c||_1 sign(g) + W1 sign(W1^T g))``, whose component along ``g`` is ``lr ||W1^T g||_1 / ||g||``
    ``~ lr k sigma_init sqrt(2/pi)`` for ``W1 ~ N(0, sigma_init^2)``: the step grows with ``k sigma_init``.
    """
    W1, W2, G = as_f64("W1", W1), as_f64("W2", W2), as_f64("G", G)
    check_shapes(W1, W2, G)
    return -lr * (np.sign(G @ W2.T) @ W2 + W1 @ np.sign(W1.T @ G))
