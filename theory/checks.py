"""The paper's claims as functions that return measured residuals, slopes and counts.

Each ``check_*`` function returns a list of :class:`Check` rows (claim, measured value, tolerance, pass/fail and
the numbers behind it); :func:`run_all` gathers them for ``python -m theory``.

1. Claim 1: ``{v_j (x) u_i}`` is an orthonormal basis of ``R^{nd}``: ``max |B^T B - I|``.
2. Main Theorem, Eq. 13 = Eq. 6: relative residual of the spectral update (dense and thin) against
   ``W1 W1^T G + G W2^T W2``, for ``k > d``, ``k = d`` and ``k < d``.
3. Eq. 9 = Eq. 6 + ``eta^2 G W2^T W1^T G`` exactly, and the first-order residual grows as ``eta^2`` (fitted log-log
   slope over ``eta`` in ``[1e-4, 1e-1]``).
4. Sparsity (Section 2.2): a single-layer step changes only the ``b`` queried columns; a two-layer step all ``n``.
5. Section 2.4: the number of non-zero enhancement factors equals the closed form (``k >= d`` and ``k < d``).
6. All of the above with ``G`` the gradient of a real DLRM loss from :mod:`mlet_jax`, and a real SGD step of the
   model's MLET parameters against Eq. 6 plus the ``eta^2`` term (:func:`check_dlrm`).

References:
    Deng et al., "Enhancing cross-category learning in recommendation systems with multi-layer embedding
    training" (MLET), arXiv:2309.15881, Sections 2.2-2.4 and Appendix A.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlet_jax.embeddings import EmbeddingSpec, collapse
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import torch_sgd
from theory.enhancement import (
    adagrad_first_step_prediction,
    make_optimizer,
    measured_enhancement,
    two_layer_step,
    x64,
)
from theory.params import field_matrix, field_rows, from_params
from theory.spectral import (
    DENSE_MAX_N,
    count_nonzero_enhancement_factors,
    full_right_vectors,
    measured_nonzero_enhancement_factors,
    svd_factors,
)
from theory.updates import (
    first_order_update,
    second_order_term,
    single_layer_sgd_step,
    spectral_update,
    two_layer_sgd_step,
)

RESIDUAL_TOL = 1e-10
SLOPE_TOL = 0.02
# Claim 1 builds the nd x nd Kronecker basis: at most 2048^2 float64 = 32 MiB.
CLAIM1_MAX_ND = 2048
ETAS = tuple(np.logspace(-4, -1, 13))
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass
class Check:
    """One row of the verification report.

    Attributes:
        claim: what is checked, with the equation.
        measured: the measured number (residual, slope or count).
        tolerance: the bound it is held to, as text (``"<= 1e-10"``, ``"2 +- 0.02"``, ``"== 480"``).
        passed: whether ``measured`` is within ``tolerance``.
        details: further measured numbers (sizes, both counts, the other method's residual, ...).
    """

    claim: str
    measured: float
    tolerance: str
    passed: bool
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "measured": self.measured, "tolerance": self.tolerance,
                "passed": bool(self.passed), "details": self.details}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b||_F / ||b||_F`` (0 when both are 0)."""
    den = float(np.linalg.norm(b))
    num = float(np.linalg.norm(a - b))
    return num / den if den else num


def _residual_check(claim: str, value: float, tol: float = RESIDUAL_TOL, **details) -> Check:
    return Check(claim, float(value), f"<= {tol:g}", bool(value <= tol), details)


def regime(d: int, k: int) -> str:
    """``"k>d"``, ``"k=d"`` or ``"k<d"``."""
    return "k>d" if k > d else ("k=d" if k == d else "k<d")


def random_case(d: int, k: int, n: int, seed: int = 0, batch: int = 8, projection_std: float = 0.25):
    """``(W1, W2, G, queried)`` shaped like a freshly initialized MLET field and a batch gradient.

    ``W1`` (d x k) ~ N(0, projection_std^2) (the paper's projection init), ``W2`` (k x n) ~ U(+-1/sqrt(n)) (the DLRM
    table init), and ``G`` (d x n) non-zero only on ``min(batch, n)`` distinct queried columns (Eq. 5 with a batch),
    scaled to ``||G||_F = 1``.
    """
    rng = np.random.default_rng(seed)
    W1 = projection_std * rng.standard_normal((d, k))
    W2 = rng.uniform(-1.0, 1.0, (k, n))
    W2 /= math.sqrt(n)  # in place: at n = 10^7 a second k x n copy is 5 GB
    queried = np.sort(rng.choice(n, size=min(batch, n), replace=False))
    G = np.zeros((d, n))
    G[:, queried] = rng.standard_normal((d, queried.size))
    G /= np.linalg.norm(G)
    return W1, W2, G, queried


def claim1_residual(W1, W2) -> float:
    """``max |B^T B - I|`` for ``B = [v_j (x) u_i]`` (the ``nd x nd`` matrix ``kron(V, U)``; Claim 1, Eq. 14).

    Builds the full ``V`` and ``B``; refuses ``n d > CLAIM1_MAX_ND`` (2048).
    """
    W1, W2 = np.asarray(W1, np.float64), np.asarray(W2, np.float64)
    d, n = W1.shape[0], W2.shape[1]
    if n * d > CLAIM1_MAX_ND:
        raise ValueError(f"Claim 1 builds the {n * d} x {n * d} basis; it accepts n d <= {CLAIM1_MAX_ND}")
    U = svd_factors(W1, W2, method="lapack").U
    V, _ = full_right_vectors(W2)
    B = np.kron(V, U)  # column j d + i is v_j (x) u_i = vec(u_i v_j^T)
    return float(np.max(np.abs(B.T @ B - np.eye(n * d))))


def check_claim1(d: int, k: int, n: int, seed: int = 0) -> list[Check]:
    """Claim 1 at ``(d, k, n)`` (``n`` reduced so that ``n d <= 2048``)."""
    n = max(1, min(n, CLAIM1_MAX_ND // d))
    W1, W2, _, _ = random_case(d, k, n, seed)
    return [_residual_check(f"Claim 1: {{v_j (x) u_i}} orthonormal, max|B^T B - I| (d={d}, k={k}, n={n})",
                            claim1_residual(W1, W2), d=d, k=k, n=n)]


def eq13_residuals(W1, W2, G) -> dict[str, float | None]:
    """Relative residual of Eq. 13 (spectral, ``thin`` and, for ``n <= DENSE_MAX_N``, ``dense``) against Eq. 6."""
    ref = first_order_update(W1, W2, G)
    out: dict[str, float | None] = {"thin": rel(spectral_update(W1, W2, G, method="thin"), ref)}
    n = np.shape(W2)[1]
    out["dense"] = rel(spectral_update(W1, W2, G, method="dense"), ref) if n <= DENSE_MAX_N else None
    return out


def check_eq13(d: int, ks: Sequence[int], n: int, seed: int = 0) -> list[Check]:
    """Eq. 13 = Eq. 6 for each inner dimension in ``ks`` (cover ``k > d``, ``k = d`` and ``k < d``)."""
    rows = []
    for k in ks:
        W1, W2, G, _ = random_case(d, k, n, seed)
        res = eq13_residuals(W1, W2, G)
        for method in ("thin", "dense"):
            if res[method] is not None:
                rows.append(_residual_check(
                    f"Eq. 13 = Eq. 6, {method}, {regime(d, k)} (d={d}, k={k}, n={n})", res[method],
                    d=d, k=k, n=n, method=method))
    return rows


def second_order_measurements(W1, W2, G, eta: float = 0.1, etas: Sequence[float] = ETAS) -> dict[str, Any]:
    """The exact step (Eq. 9) against Eq. 6 and its ``eta^2`` correction.

    With ``F = W1 W1^T G + G W2^T W2`` (Eq. 6) and ``T = G W2^T W1^T G``, expanding Eq. 9 gives exactly
    ``W(t+1) = W - eta F + eta^2 T``.

    Returns:
        ``eta2_residual``: ``||(W(t+1) - (W - eta F)) - eta^2 T|| / ||eta^2 T||`` at ``eta``;
        ``expansion_residual``: ``||W(t+1) - (W - eta F + eta^2 T)|| / ||W(t+1) - W||`` at ``eta``;
        ``slope``: least-squares slope of ``log ||W(t+1) - (W - eta F)||`` over ``log eta`` for ``etas``
        (2 by Eq. 10); ``first_order_residuals``: those norms per ``eta``.
    """
    W1, W2, G = (np.asarray(x, np.float64) for x in (W1, W2, G))
    W = W1 @ W2
    F = first_order_update(W1, W2, G)
    T = second_order_term(W1, W2, G)
    norms = [float(np.linalg.norm(two_layer_sgd_step(W1, W2, G, e) - (W - e * F))) for e in etas]
    exact = two_layer_sgd_step(W1, W2, G, eta)
    first = W - eta * F
    slope = float(np.polyfit(np.log(etas), np.log(norms), 1)[0]) if min(norms) > 0 else float("nan")
    return {"eta": float(eta), "eta2_residual": rel(exact - first, eta**2 * T),
            "expansion_residual": rel(exact - W, (first - W) + eta**2 * T), "slope": slope,
            "etas": [float(e) for e in etas], "first_order_residuals": norms}


def check_second_order(W1, W2, G, label: str = "") -> list[Check]:
    """Check 3: Eq. 9 = Eq. 6 + ``eta^2 G W2^T W1^T G`` and the slope-2 first-order residual."""
    m = second_order_measurements(W1, W2, G)
    details = {"etas": m["etas"], "first_order_residuals": m["first_order_residuals"]}
    return [
        _residual_check(f"Eq. 9 - Eq. 6 = eta^2 G W2^T W1^T G (eta=0.1){label}", m["eta2_residual"]),
        _residual_check(f"Eq. 9 = W - eta F + eta^2 T, relative to the step (eta=0.1){label}",
                        m["expansion_residual"]),
        Check(f"slope of log||Eq. 9 - Eq. 6|| vs log eta, eta in [1e-4, 1e-1]{label}", m["slope"],
              f"2 +- {SLOPE_TOL:g}", bool(abs(m["slope"] - 2.0) <= SLOPE_TOL), details),
    ]


def changed_columns(W_new: np.ndarray, W: np.ndarray) -> int:
    """Columns of ``W_new`` that differ from ``W`` in any entry (exact comparison)."""
    return int(np.sum(np.any(W_new != W, axis=0)))


def sparsity_counts(W1, W2, G, eta: float = 0.1) -> dict[str, int]:
    """Changed columns after a single-layer (Eq. 4) and an exact two-layer (Eq. 9) SGD step, and the queried ones."""
    W = np.asarray(W1, np.float64) @ np.asarray(W2, np.float64)
    G = np.asarray(G, np.float64)
    return {"queried": int(np.sum(np.any(G != 0, axis=0))), "n": int(W.shape[1]),
            "single_layer": changed_columns(single_layer_sgd_step(W, G, eta), W),
            "two_layer": changed_columns(two_layer_sgd_step(W1, W2, G, eta), W)}


def check_sparsity(W1, W2, G, label: str = "") -> list[Check]:
    """Check 4: the single-layer step changes exactly the ``b`` queried columns, the two-layer step all ``n``."""
    c = sparsity_counts(W1, W2, G)
    return [
        Check(f"single-layer step (Eq. 4) changes only the queried columns{label}", c["single_layer"],
              f"== b = {c['queried']}", c["single_layer"] == c["queried"], c),
        Check(f"two-layer step (Eq. 9) changes all n columns{label}", c["two_layer"], f"== n = {c['n']}",
              c["two_layer"] == c["n"], c),
    ]


def check_counts(d: int, ks: Sequence[int], n: int, seed: int = 0) -> list[Check]:
    """Check 5: measured non-zero enhancement factors equal the closed form (Section 2.4), per ``k``."""
    rows = []
    for k in ks:
        W1, W2, _, _ = random_case(d, k, n, seed)
        closed = count_nonzero_enhancement_factors(d, k, n)
        measured = measured_nonzero_enhancement_factors(W1, W2)
        form = "d n" if k >= d else "k n + (d - k) k"
        rows.append(Check(f"non-zero enhancement factors = {form}, {regime(d, k)} (d={d}, k={k}, n={n})",
                          measured, f"== {closed}", measured == closed, {"closed_form": closed, "d": d, "k": k,
                                                                          "n": n}))
    return rows


def default_ks(d: int, k: int) -> list[int]:
    """``k`` plus one inner dimension in each regime not already covered: ``2 d``, ``d`` and ``max(1, d // 2)``."""
    ks = [k]
    for extra in (2 * d, d, max(1, d // 2)):
        if regime(d, extra) not in {regime(d, x) for x in ks}:
            ks.append(extra)
    return ks


def run_random(n: int = 2000, d: int = 16, k: int = 64, seed: int = 0, batch: int = 8) -> list[Check]:
    """Checks 1-5 on random factors of the given size (and the other two regimes of ``k`` versus ``d``)."""
    ks = default_ks(d, k)
    W1, W2, G, _ = random_case(d, k, n, seed, batch)
    rows = []
    d1 = min(d, 8)
    for kk in ks:
        k1 = {"k>d": 2 * d1, "k=d": d1, "k<d": max(1, d1 // 2)}[regime(d, kk)]
        if regime(d1, k1) == regime(d, kk):
            rows += check_claim1(d1, k1, min(n, 64), seed)
    rows += check_eq13(d, ks, n, seed)
    rows += check_second_order(W1, W2, G, f" (d={d}, k={k}, n={n})")
    rows += check_sparsity(W1, W2, G, f" (b={min(batch, n)}, n={n})")
    rows += check_counts(d, ks, n, seed)
    return rows


def dlrm_case(seed: int = 0, vocab_sizes: Sequence[int] = (50, 40, 30), d: int = 4, k: int = 8, batch: int = 32,
              num_dense: int = 3, hidden: Sequence[int] = (8,), lr: float = 0.2) -> dict[str, Any]:
    """See :func:`_dlrm_case`; cached per settings (the JAX compilation dominates), returned as a fresh copy."""
    c = _dlrm_case(seed, tuple(int(v) for v in vocab_sizes), d, k, batch, num_dense, tuple(hidden), lr)
    return copy.deepcopy(c)


@functools.lru_cache(maxsize=4)
def _dlrm_case(seed: int, vocab_sizes: tuple[int, ...], d: int, k: int, batch: int, num_dense: int,
               hidden: tuple[int, ...], lr: float) -> dict[str, Any]:
    """A tiny float64 MLET DLRM from :mod:`mlet_jax`, its loss gradients on a synthetic batch, and one real SGD step.

    ``G`` of each field is the gradient of the same loss with respect to the collapsed single-layer table
    (:func:`mlet_jax.embeddings.collapse`), i.e. ``dL/dW`` at ``W = W1 W2``; the step is
    :func:`mlet_jax.optim.torch_sgd` (``lr``, the paper's DLRM rate 0.2) applied to every parameter.

    Returns:
        ``params``, ``grads`` and ``new_params`` (numpy trees), ``G_table`` (``[n_total, d]``: ``dL/dW^T``),
        ``ids`` (``[batch, F]`` local ids), ``losses`` (MLET and collapsed model, equal), and the settings.
    """
    vocab_sizes = tuple(int(v) for v in vocab_sizes)
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((batch, num_dense))
    ids = np.stack([rng.integers(0, v, batch) for v in vocab_sizes], axis=1).astype(np.int32)
    labels = rng.integers(0, 2, batch).astype(np.float64)
    with x64():
        spec = EmbeddingSpec(kind="mlet", dim=d, inner_dim=k)
        model = DLRM(vocab_sizes=vocab_sizes, num_dense=num_dense, embedding=spec, bottom_mlp=tuple(hidden),
                     top_mlp=tuple(hidden), param_dtype=jnp.float64)
        collapsed = model.clone(embedding=spec.collapsed())
        tx = torch_sgd(lr)

        def loss(m, p):
            logits = m.apply({"params": p}, jnp.asarray(dense), jnp.asarray(ids))
            return optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(labels)).mean()

        def run(key):
            params = model.init(key, jnp.asarray(dense), jnp.asarray(ids))["params"]
            mlet_loss, grads = jax.value_and_grad(lambda p: loss(model, p))(params)
            single_loss, cgrads = jax.value_and_grad(lambda p: loss(collapsed, p))(collapse(params, vocab_sizes))
            updates, _ = tx.update(grads, tx.init(params), params)
            return params, grads, optax.apply_updates(params, updates), cgrads, mlet_loss, single_loss

        # One compilation instead of one per primitive (eager mode takes ~1 min on 2 busy cores); LLVM's
        # optimizations cut the compile time ~3.5x and change no float64 result that the checks compare.
        key = jax.random.key(seed)
        compiled = jax.jit(run).lower(key).compile(COMPILER_OPTIONS)
        params, grads, new_params, cgrads, mlet_loss, single_loss = compiled(key)
        to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
        out = {"params": to_np(params), "grads": to_np(grads), "new_params": to_np(new_params),
               "G_table": np.asarray(cgrads["embeddings"]["table"]), "ids": ids,
               "losses": (float(mlet_loss), float(single_loss)), "vocab_sizes": vocab_sizes, "lr": lr, "d": d,
               "k": k, "batch": batch}
    if out["G_table"].dtype != np.float64:
        raise TypeError(f"DLRM gradients came back as {out['G_table'].dtype}; float64 is required")
    return out


def check_dlrm(seed: int = 0, **case_kwargs) -> list[Check]:
    """Check 6: checks 2-5 with ``G`` from a real DLRM loss, and the real SGD step against Eq. 6 + ``eta^2`` term.

    Per field ``f`` (``W1``, ``W2`` from :func:`theory.params.from_params`, ``G`` the collapsed table's gradient):
    Eqs. 7-8 (the model's factor gradients are ``G W2^T`` and ``W1^T G``), Eq. 13 = Eq. 6 (thin and dense), the
    real step ``W1' W2' = W - lr F + lr^2 T``, changed columns of a single-layer step (the field's distinct queried
    ids) and of the real step (all ``n``), and the non-zero enhancement factor count. Check 3's slope uses field 0
    with ``G / ||G||``.
    """
    c = dlrm_case(seed, **case_kwargs)
    vocab, lr = c["vocab_sizes"], c["lr"]
    grad_table, grad_proj = c["grads"]["embeddings"]["table"], c["grads"]["embeddings"]["projection"]
    worst = {"loss": abs(c["losses"][0] - c["losses"][1]) / abs(c["losses"][1]), "eq78": 0.0, "thin": 0.0,
             "dense": 0.0, "step": 0.0}
    single_ok, two_ok, count_ok = [], [], []
    for f in range(len(vocab)):
        W1, W2 = from_params(c["params"], vocab, f)
        W1n, W2n = from_params(c["new_params"], vocab, f)
        G = field_matrix(c["G_table"], vocab, f)
        W = W1 @ W2
        worst["eq78"] = max(worst["eq78"], rel(grad_proj[f].T, G @ W2.T),
                            rel(grad_table[field_rows(vocab, f)].T, W1.T @ G))
        res = eq13_residuals(W1, W2, G)
        worst["thin"], worst["dense"] = max(worst["thin"], res["thin"]), max(worst["dense"], res["dense"])
        predicted = W - lr * first_order_update(W1, W2, G) + lr**2 * second_order_term(W1, W2, G)
        W_new = W1n @ W2n
        worst["step"] = max(worst["step"], rel(W_new - W, predicted - W))
        queried = np.unique(c["ids"][:, f]).size
        single_ok.append((changed_columns(single_layer_sgd_step(W, G, lr), W), queried))
        two_ok.append((changed_columns(W_new, W), W.shape[1]))
        d, k, n = W1.shape[0], W1.shape[1], W2.shape[1]
        count_ok.append((measured_nonzero_enhancement_factors(W1, W2), count_nonzero_enhancement_factors(d, k, n)))
    tag = f" [DLRM, fields={list(vocab)}, d={c['d']}, k={c['k']}, batch={c['batch']}, lr={lr}]"
    rows = [
        _residual_check(f"MLET and collapsed DLRM give the same loss{tag}", worst["loss"], 1e-12),
        _residual_check(f"Eqs. 7-8: dL/dW1 = G W2^T, dL/dW2 = W1^T G (max over fields){tag}", worst["eq78"]),
        _residual_check(f"Eq. 13 = Eq. 6, thin, real G (max over fields){tag}", worst["thin"]),
        _residual_check(f"Eq. 13 = Eq. 6, dense, real G (max over fields){tag}", worst["dense"]),
        _residual_check(f"real SGD step = W - lr F + lr^2 G W2^T W1^T G, rel. to step{tag}", worst["step"]),
        Check(f"single-layer step changes only the queried ids (per field){tag}", sum(a for a, _ in single_ok),
              f"== {sum(b for _, b in single_ok)} (distinct ids)", all(a == b for a, b in single_ok),
              {"per_field": single_ok}),
        Check(f"real two-layer step changes all n columns (per field){tag}", sum(a for a, _ in two_ok),
              f"== {sum(b for _, b in two_ok)}", all(a == b for a, b in two_ok), {"per_field": two_ok}),
        Check(f"non-zero enhancement factors = closed form (per field){tag}", sum(a for a, _ in count_ok),
              f"== {sum(b for _, b in count_ok)}", all(a == b for a, b in count_ok), {"per_field": count_ok}),
    ]
    W1, W2 = from_params(c["params"], vocab, 0)
    G = field_matrix(c["G_table"], vocab, 0)
    rows += check_second_order(W1, W2, G / np.linalg.norm(G), f", real G/||G|| of field 0{tag}")
    return rows


def check_enhancement(W1, W2, G, lrs: Sequence[float] = (1e-3, 1e-4), label: str = "") -> list[Check]:
    """SGD's measured enhancement factors equal ``sigma1^2 + sigma2^2`` up to ``O(eta)``, and the first torch-Adagrad
    step equals its first-order prediction up to ``O(lr)`` (:mod:`theory.enhancement`).

    The SGD deviation is exactly ``eta |t_ij / g_ij|``, so its median over directions falls 10x per decade of
    ``eta``: the fitted slope of log(median deviation) over log(eta) is 1.
    """
    devs = [float(np.median(measured_enhancement(W1, W2, G, "sgd", lr).relative_deviation())) for lr in lrs]
    sgd_slope = float(np.polyfit(np.log(lrs), np.log(devs), 1)[0])
    W = np.asarray(W1) @ np.asarray(W2)
    ada = [rel(two_layer_step(W1, W2, G, make_optimizer("adagrad", lr)) - W,
               adagrad_first_step_prediction(W1, W2, G, lr)) for lr in lrs]
    ada_slope = float(np.polyfit(np.log(lrs), np.log(ada), 1)[0])
    return [
        Check(f"SGD measured factors = sigma1^2 + sigma2^2 + O(eta): median rel. dev. at eta={min(lrs):g}{label}",
              devs[int(np.argmin(lrs))], "<= 1e-3", devs[int(np.argmin(lrs))] <= 1e-3,
              {"lrs": list(lrs), "median_rel_dev": devs}),
        Check(f"SGD factor deviation is O(eta): log-log slope over eta in {list(lrs)}{label}", sgd_slope,
              "1 +- 0.05", abs(sgd_slope - 1.0) <= 0.05, {"median_rel_dev": devs}),
        Check(f"torch Adagrad first step = -lr(sign(G W2^T) W2 + W1 sign(W1^T G)) + O(lr^2): log-log slope of "
              f"the rel. residual{label}", ada_slope, "1 +- 0.05", abs(ada_slope - 1.0) <= 0.05,
              {"lrs": list(lrs), "rel_residual": ada}),
    ]


def optimizer_summaries(W1, W2, G, projection_std: float = 0.25) -> list[dict[str, Any]]:
    """One line per optimizer (SGD, torch Adagrad, optax Adam as an arbitrary optax transformation): how the
    measured enhancement factors of one real step compare with the SGD theory ``sigma1^2 + sigma2^2``."""
    d, k = np.shape(W1)
    out = []
    for name, opt, lr in (("sgd", "sgd", 1e-3), ("adagrad (torch)", "adagrad", 0.02),
                          ("adam (optax, any transformation)", optax.adam(1e-3), None)):
        m = measured_enhancement(W1, W2, G, opt, lr=lr or 0.0)
        s = m.summary()
        comp = m.complement / m.theory_complement
        s["median_complement_ratio"] = float(np.nanmedian(comp)) if np.isfinite(comp).any() else float("nan")
        s["optimizer"], s["lr"] = name, (lr if lr is not None else 1e-3)
        text = (f"{name} lr={s['lr']:g}: measured/theory factor median {s['median_ratio']:.4g} "
                f"(median |rel. dev.| {s['median_rel_dev']:.2e}, p90 {s['p90_rel_dev']:.2e}); "
                f"queried-column step {s['step_ratio']:.3g}x the single-layer one; "
                f"{s['changed_columns']}/{np.shape(W2)[1]} columns move")
        if opt != "sgd":
            scale = k * projection_std * math.sqrt(2 / math.pi) / math.sqrt(d)
            text += (f"; per-coordinate normalized steps, so factors are not sigma1^2+sigma2^2 "
                     f"(k sigma_init sqrt(2/pi)/sqrt(d) = {scale:.3g})")
        s["text"] = text
        out.append(s)
    return out
