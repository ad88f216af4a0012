"""Torch-exact SGD and Adagrad against a numpy float64 transcription of torch's documented update rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlet_jax.optim import OptimizerSpec, partitioned, torch_adagrad, torch_sgd
from mlet_jax.row_sparse import RowSparse


def np_torch_sgd(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD (docs' algorithm box), float64."""
    p = p.astype(np.float64).copy()
    buf = None
    for t, g in enumerate(grads):
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if t == 0 else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def np_torch_adagrad(p, grads, lr, lr_decay=0.0, weight_decay=0.0, init_acc=0.0, eps=1e-10):
    """torch.optim.Adagrad (docs' algorithm box), float64."""
    p = p.astype(np.float64).copy()
    s = np.full_like(p, init_acc)
    for t, g in enumerate(grads, start=1):
        clr = lr / (1 + (t - 1) * lr_decay)
        g = g + weight_decay * p
        s = s + g * g
        p = p - clr * g / (np.sqrt(s) + eps)
    return p


def run_tx(tx, p0, grads):
    p = jnp.asarray(p0, jnp.float32)
    state = tx.init(p)
    for g in grads:
        u, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
        p = optax.apply_updates(p, u)
    return np.asarray(p)


def sparse_grads(rng, shape, steps):
    """Gradients where some rows are zero at some steps (rows a batch did not touch)."""
    out = []
    for _ in range(steps):
        g = rng.standard_normal(shape)
        g[rng.random(shape[0]) < 0.4] = 0.0
        out.append(g)
    out[0][0] = 0.0  # row 0 untouched at the first step: its accumulator stays 0 there
    for g in out:
        g[1] = 0.0  # row 1 never touched: it must not move (without weight decay)
    return out


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.1),
                                dict(momentum=0.9, nesterov=True), dict(weight_decay=0.01)])
def test_sgd_matches_torch_rule(kw):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((7, 3))
    grads = sparse_grads(rng, p0.shape, 6)
    got = run_tx(torch_sgd(0.2, **kw), p0, grads)
    want = np_torch_sgd(p0, grads, 0.2, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(), dict(lr_decay=0.1), dict(weight_decay=0.01), dict(init_acc=0.1),
                                dict(lr_decay=0.05, weight_decay=0.02, init_acc=0.3)])
def test_adagrad_matches_torch_rule(kw):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((9, 4))
    grads = sparse_grads(rng, p0.shape, 8)
    tkw = dict(kw)
    if "init_acc" in tkw:
        tkw["initial_accumulator_value"] = tkw.pop("init_acc")
    got = run_tx(torch_adagrad(0.02, **tkw), p0, grads)
    want = np_torch_adagrad(p0, grads, 0.02, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if "weight_decay" not in kw:
        np.testing.assert_array_equal(got[1], p0[1].astype(np.float32))


def test_adagrad_first_step_is_sign_times_lr():
    # With s0 = 0 the first torch step is lr * g / (|g| + 1e-10) = lr * sign(g): optax.adagrad's default differs.
    g = np.array([[3.0, -0.5], [1e-3, 0.0]])
    got = run_tx(torch_adagrad(0.02), np.zeros((2, 2)), [g])
    np.testing.assert_allclose(got, -0.02 * np.sign(g) * (np.abs(g) / (np.abs(g) + 1e-10)), rtol=1e-6)
    ref = run_tx(optax.adagrad(0.02), np.zeros((2, 2)), [g])
    assert np.abs(ref - got).max() > 1e-3


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_row_sparse_equals_dense(name):
    rng = np.random.default_rng(2)
    spec = OptimizerSpec(name, 0.1)
    table = rng.standard_normal((20, 3)).astype(np.float32)
    dense_p = jnp.asarray(table)
    tx = spec.transform()
    dstate = tx.init(dense_p)
    rs = RowSparse(spec)
    sp, sstate = jnp.asarray(table), rs.init(jnp.asarray(table))
    for _ in range(10):
        rows = rng.integers(0, 20, 6)
        uniq = np.unique(rows)
        g_rows = rng.standard_normal((len(uniq), 3)).astype(np.float32)
        g = np.zeros_like(table)
        g[uniq] = g_rows
        u, dstate = tx.update(jnp.asarray(g), dstate, dense_p)
        dense_p = optax.apply_updates(dense_p, u)
        # pad like jnp.unique(size=...): repeats of row uniq[0] with zero gradient
        pad = np.concatenate([uniq, np.full(3, uniq[0])])
        gpad = np.concatenate([g_rows, np.zeros((3, 3), np.float32)])
        sp, sstate = rs.update(sp, sstate, jnp.asarray(pad), jnp.asarray(gpad))
    np.testing.assert_allclose(np.asarray(sp), np.asarray(dense_p), rtol=0, atol=1e-6)


def test_row_sparse_refuses_inexact_settings():
    with pytest.raises(ValueError, match="weight decay"):
        RowSparse(OptimizerSpec("adagrad", 0.1, weight_decay=1e-3))


def test_partitioned_groups_and_missing_label():
    params = {"emb": {"table": jnp.ones((4, 2))}, "mlp": {"kernel": jnp.ones((2, 2))}}
    tx = partitioned({"table": torch_adagrad(0.1), "dense": torch_sgd(0.5)})
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    u, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(u["emb"]["table"], -0.1 * 1 / (1 + 1e-10), rtol=1e-6)
    np.testing.assert_allclose(u["mlp"]["kernel"], -0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="no optimizer"):
        partitioned({"table": torch_sgd(0.1)}).init(params)


def test_spec_validation():
    with pytest.raises(ValueError, match="optimizer must be"):
        OptimizerSpec("adam", 0.1)
    with pytest.raises(ValueError, match="learning rate"):
        OptimizerSpec("sgd", 0.0)
    assert OptimizerSpec("adagrad", 0.02).scaled(4).lr == pytest.approx(0.08)


def test_adagrad_float64_keeps_float64_lr():
    # lr = 0.02 is not a float32 number: a float64 run must use the float64 value exactly
    with jax.enable_x64(True):
        for decay in (0.0, 0.1):
            tx = torch_adagrad(0.02, lr_decay=decay)
            p = jnp.zeros(3, jnp.float64)
            g = jnp.array([1.0, -2.0, 0.5], jnp.float64)
            st = tx.init(p)
            u, st = tx.update(g, st, p)
            u, st = tx.update(g, st, p)
            s = 2 * np.asarray(g) ** 2
            want = -0.02 / (1 + decay) * np.asarray(g) / (np.sqrt(s) + 1e-10)
            assert u.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(u), want, rtol=1e-15)
