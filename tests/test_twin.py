"""The isotropic twin (experiments/twin.py): under SGD its update has MLET's mean enhancement on a fixed batch.

References: numpy float64 SVDs of each field's factors (the theorem's ``a sigma_P(i)^2 + b sigma_T(j)^2`` on the
``d x n_f`` grid of directions), the measured coordinates of MLET's real step in those bases, and the library's own
single-layer SGD step (Trainer, itself checked against torch) for the twin's step with equal rates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import twin
from mlet_jax.data import batches, make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models import build_model, collapse_model
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer

VOCAB = [5, 9, 3, 12]
D, K = 2, 4
DS = make_synthetic(seed=3, n_train=64, n_valid=0, n_test=8, vocab_sizes=VOCAB, num_dense=2)


def _model(kind, std=0.7):
    spec = EmbeddingSpec(kind, D, K if kind == "mlet" else None, projection_std=std)
    return build_model("dlrm", DS.schema, spec, param_dtype=jnp.float64, bottom_mlp=(4,), top_mlp=(4,))


def _batch():
    return {k: jnp.asarray(v) for k, v in next(batches(DS.train, 32, seed=0)).items()}


def _fields(table, proj):
    lo = 0
    for f, n in enumerate(VOCAB):
        yield f, np.asarray(table[lo:lo + n], np.float64), np.asarray(proj[f], np.float64)
        lo += n


def test_field_ids_and_bad_projection():
    fid = twin.field_ids(VOCAB, sum(VOCAB) + 3)
    np.testing.assert_array_equal(fid, [0] * 5 + [1] * 9 + [2] * 3 + [3] * 12 + [4] * 3)
    with pytest.raises(ValueError, match="n_rows"):
        twin.field_ids(VOCAB, 10)
    with pytest.raises(ValueError, match="projection"):
        twin.mean_enhancement({"table": jnp.zeros((29, K)), "projection": jnp.zeros((3, K, D))}, VOCAB, 1.0, 1.0)


def test_twin_has_mlets_mean_enhancement_on_a_fixed_batch():
    a, b = 3e-5, 2e-5  # table lr, projection lr: small, so MLET's step is first-order exact to ~1e-4
    with jax.enable_x64(True):
        model = _model("mlet")
        batch = _batch()
        cfg = TrainConfig(OptimizerSpec("sgd", b), OptimizerSpec("sgd", a), sparse_tables=False)
        tr = Trainer(model, cfg)
        st = tr.init(0, batch)
        emb0 = jax.tree_util.tree_map(np.asarray, st.params["embeddings"])
        e = np.asarray(twin.mean_enhancement(st.params["embeddings"], VOCAB, a, b))
        # the single-layer view: the collapsed model, its gradient G_f with respect to each field's W_f
        smodel, sparams = collapse_model(model, st.params)
        str_ = Trainer(smodel, TrainConfig(OptimizerSpec("sgd", b)))
        g = jax.grad(lambda p: str_.loss_and_logits(p, batch)[0])(sparams)["embeddings"]["table"]
        w0 = np.asarray(sparams["embeddings"]["table"])
        twin_params, _ = twin.twin_step(str_, tuple(VOCAB), jax.tree_util.tree_map(jnp.array, sparams), batch, b,
                                        jnp.asarray(e), a)
        dtwin = np.asarray(twin_params["embeddings"]["table"]) - w0
        st1, _ = tr.train_step(st, batch)
        emb1 = jax.tree_util.tree_map(np.asarray, st1.params["embeddings"])
    g = np.asarray(g)
    lo = 0
    for f, t0, p0 in _fields(emb0["table"], emb0["projection"]):
        n = VOCAB[f]
        t1, p1 = emb1["table"][lo:lo + n], emb1["projection"][f]
        u, s_t, _ = np.linalg.svd(t0, full_matrices=True)  # n x n: left singular vectors of T_f
        _, s_p, vt = np.linalg.svd(p0)  # right singular vectors of P_f (d of them)
        s_t = np.concatenate([s_t, np.zeros(n - len(s_t))])
        theory = a * s_p[None, :] ** 2 + b * s_t[:, None] ** 2  # [n, d]: direction u_j v_i^T
        np.testing.assert_allclose(e[f], theory.mean(), rtol=1e-12)  # the closed form is the grid mean
        assert theory.std() > 0.1 * theory.mean()  # MLET's weighting is anisotropic on this init
        gf = g[lo:lo + n]
        single = -(u.T @ gf @ vt.T)  # single-layer step coordinates per unit lr
        ok = np.abs(single) > 1e-3 * np.abs(single).max()
        mlet = u.T @ (t1 @ p1 - t0 @ p0) @ vt.T
        np.testing.assert_allclose((mlet / np.where(ok, single, 1))[ok], theory[ok], rtol=2e-3)
        tw = u.T @ dtwin[lo:lo + n] @ vt.T
        np.testing.assert_allclose((tw / np.where(ok, single, 1))[ok], e[f], rtol=1e-6)  # isotropic, same mean
        lo += n


@pytest.mark.slow
def test_twin_step_with_equal_rates_is_the_single_layer_sgd_step():
    with jax.enable_x64(True):
        model = _model("single")
        bl = [{k: jnp.asarray(v) for k, v in b.items()} for b in batches(DS.train, 16, seed=1)]
        lr, table_lr = 0.3, 1.7
        tr = Trainer(model, TrainConfig(OptimizerSpec("sgd", lr), OptimizerSpec("sgd", table_lr),
                                        sparse_tables=True))
        st = tr.init(2, bl[0])
        params = jax.tree_util.tree_map(jnp.array, st.params)
        for b in bl:
            st, _ = tr.train_step(st, b)
            params, _ = twin.twin_step(tr, tuple(VOCAB), params, b, lr, jnp.full(len(VOCAB), table_lr), table_lr)
        for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(st.params), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-12)


def test_plan_checks():
    with pytest.raises(ValueError, match="seeds"):
        twin.TwinPlan(seeds=1)
    with pytest.raises(ValueError, match="k must be"):
        twin.TwinPlan(d=8, k=4)
    with pytest.raises(SystemExit):
        twin.main(["--out", "/tmp/x", "--from-tuned", "/nonexistent/tuned.json"])


@pytest.mark.slow
def test_adagrad_twin_step_with_unit_factor_is_the_single_layer_adagrad_step_and_matches_a_target():
    with jax.enable_x64(True):
        model = _model("single")
        bl = [{k: jnp.asarray(v) for k, v in b.items()} for b in batches(DS.train, 16, seed=1)]
        lr, table_lr = 0.05, 0.3
        tr = Trainer(model, TrainConfig(OptimizerSpec("adagrad", lr), OptimizerSpec("adagrad", table_lr),
                                        sparse_tables=True))
        st = tr.init(2, bl[0])
        params = jax.tree_util.tree_map(jnp.array, st.params)
        acc = jax.tree_util.tree_map(jnp.zeros_like, params)
        f = len(VOCAB)
        for b in bl[:3]:
            st, _ = tr.train_step(st, b)
            params, acc, rho, _ = twin.twin_adagrad_step(tr, tuple(VOCAB), params, acc, b, lr, table_lr,
                                                         -jnp.ones(f), jnp.ones(f))
        for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(st.params), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-12)
        # a target norm per field: the field's rows then move by exactly that much
        target = jnp.asarray([1e-3, 2e-3, 5e-4, 3e-3])
        before = np.asarray(params["embeddings"]["table"])
        params, acc, rho, _ = twin.twin_adagrad_step(tr, tuple(VOCAB), params, acc, bl[3], lr, table_lr, target,
                                                     jnp.ones(f))
        dw = np.asarray(params["embeddings"]["table"]) - before
    lo = 0
    for i, n in enumerate(VOCAB):
        np.testing.assert_allclose(np.linalg.norm(dw[lo:lo + n]), float(target[i]), rtol=1e-9)
        lo += n
