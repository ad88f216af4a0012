"""Each interaction block against a direct numpy (float64) transcription of its equation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlet_jax.models.layers import (
    CIN,
    MLP,
    CrossNet,
    InteractingLayer,
    Linear,
    bi_interaction,
    deep_input,
    dot_interaction,
    fm_interaction,
)

B, F, D = 5, 4, 3
TOL = dict(rtol=2e-5, atol=2e-6)


@pytest.fixture
def emb():
    return np.random.default_rng(0).standard_normal((B, F, D)).astype(np.float32)


def test_fm_identity_equals_pairwise_sum(emb):
    e = emb.astype(np.float64)
    want = np.array([sum(e[b, i] @ e[b, j] for i, j in itertools.combinations(range(F), 2)) for b in range(B)])
    np.testing.assert_allclose(fm_interaction(jnp.asarray(emb)), want, **TOL)


def test_bi_interaction_equals_pairwise_elementwise_sum(emb):
    e = emb.astype(np.float64)
    want = np.stack([sum(e[b, i] * e[b, j] for i, j in itertools.combinations(range(F), 2)) for b in range(B)])
    got = bi_interaction(jnp.asarray(emb))
    assert got.shape == (B, D)
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(got.sum(axis=1), fm_interaction(jnp.asarray(emb)), **TOL)


def test_dot_interaction_equals_pairs(emb):
    e = emb.astype(np.float64)
    want = np.array([[e[b, i] @ e[b, j] for i, j in itertools.combinations(range(F), 2)] for b in range(B)])
    np.testing.assert_allclose(dot_interaction(jnp.asarray(emb)), want, **TOL)


@pytest.mark.parametrize("custom_vjp", [True, False])
def test_dot_interaction_gradient_equals_pairs(emb, custom_vjp):
    """d/dt_i of sum_p w_p <t_a(p), t_b(p)> is sum over the pairs holding i of w_p times the other vector."""
    e = emb.astype(np.float64)
    pairs = list(itertools.combinations(range(F), 2))
    w = np.random.default_rng(3).standard_normal((B, len(pairs)))
    want = np.zeros_like(e)
    for p, (i, j) in enumerate(pairs):
        want[:, i] += w[:, p, None] * e[:, j]
        want[:, j] += w[:, p, None] * e[:, i]
    w32 = jnp.asarray(w, jnp.float32)
    got = jax.grad(lambda t: jnp.sum(dot_interaction(t, custom_vjp=custom_vjp) * w32))(jnp.asarray(emb))
    np.testing.assert_allclose(got, want, **TOL)


def test_dot_interaction_forward_mode(emb):
    """The tangent of pair (i, j) along dt is <dt_i, t_j> + <t_i, dt_j>; the custom-VJP form refuses forward mode."""
    e = emb.astype(np.float64)
    dt = np.random.default_rng(4).standard_normal(e.shape)
    want = np.array([[dt[b, i] @ e[b, j] + e[b, i] @ dt[b, j] for i, j in itertools.combinations(range(F), 2)]
                     for b in range(B)])
    x, dx = jnp.asarray(emb), jnp.asarray(dt, jnp.float32)
    _, got = jax.jvp(lambda t: dot_interaction(t, custom_vjp=False), (x,), (dx,))
    np.testing.assert_allclose(got, want, **TOL)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(dot_interaction, (x,), (dx,))


def test_cross_layers(emb):
    x0 = emb.reshape(B, -1)
    net = CrossNet(num_layers=3)
    params = net.init(jax.random.key(0), x0)["params"]
    assert {k: v.shape for k, v in params.items()} == {f"{p}_{i}": (F * D,) for p in ("kernel", "bias") for i in
                                                        range(3)}
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * jnp.ones_like(p), params)  # nonzero biases too
    got = net.apply({"params": params}, x0)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for b in range(B):
        x0b = x0[b].astype(np.float64)
        x = x0b
        for i in range(3):  # x_{l+1} = x_0 x_l^T w_l + b_l + x_l, with the outer product written out
            x = np.outer(x0b, x) @ p[f"kernel_{i}"] + p[f"bias_{i}"] + x
        np.testing.assert_allclose(got[b], x, **TOL)


@pytest.mark.parametrize("split_half", [True, False])
def test_cin_equals_explicit_outer_products(emb, split_half):
    sizes = (6, 4, 5) if split_half else (3, 5)
    cin = CIN(sizes, split_half)
    params = cin.init(jax.random.key(1), jnp.asarray(emb))["params"]
    got = cin.apply({"params": params}, jnp.asarray(emb))
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    n_out = (sum(sizes[:-1]) // 2 + sizes[-1]) if split_half else sum(sizes)
    assert got.shape == (B, n_out)
    for b in range(B):
        x0 = emb[b].astype(np.float64)  # [F, D]
        x, outs = x0, []
        for k, size in enumerate(sizes):
            z = np.stack([x[h] * x0[m] for h in range(x.shape[0]) for m in range(F)])  # [H*F, D], row h*F + m
            nxt = np.maximum(np.einsum("kc,kd->cd", p[f"kernel_{k}"], z) + p[f"bias_{k}"][:, None], 0.0)
            if split_half and k < len(sizes) - 1:
                x, direct = nxt[: size // 2], nxt[size // 2:]
            else:
                x, direct = nxt, nxt
            outs.append(direct.sum(axis=1))
        np.testing.assert_allclose(got[b], np.concatenate(outs), **TOL)


def test_cin_rejects_odd_split_sizes(emb):
    with pytest.raises(ValueError, match="even"):
        CIN((5, 4), True).init(jax.random.key(0), jnp.asarray(emb))


@pytest.mark.parametrize("use_res", [True, False])
def test_multi_head_self_attention_with_residual(emb, use_res):
    a, h = 3, 2
    layer = InteractingLayer(att_embedding_size=a, head_num=h, use_res=use_res)
    params = layer.init(jax.random.key(2), jnp.asarray(emb))["params"]
    params = jax.tree_util.tree_map(lambda w: w * 20.0, params)  # sharp attention, so a wrong axis shows
    got = layer.apply({"params": params}, jnp.asarray(emb))
    assert got.shape == (B, F, a * h)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for b in range(B):
        e = emb[b].astype(np.float64)
        heads = []
        for hh in range(h):
            cols = slice(hh * a, (hh + 1) * a)
            q, k, v = (e @ p[n][:, cols] for n in ("query", "key", "value"))
            s = q @ k.T
            alpha = np.exp(s - s.max(axis=1, keepdims=True))
            alpha /= alpha.sum(axis=1, keepdims=True)  # softmax over the keys j
            heads.append(alpha @ v)
        out = np.concatenate(heads, axis=1) + (e @ p["res"] if use_res else 0.0)
        np.testing.assert_allclose(got[b], np.maximum(out, 0.0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_dense", [0, 2])
def test_linear_part_sums_field_weights_and_dense(num_dense):
    vocab, slots = (3, 4, 5), (1, 2, 1)
    ids = np.array([[0, 1, -1, 4], [2, 3, 0, 0], [1, -1, -1, 2]], np.int32)
    dense = np.random.default_rng(1).standard_normal((3, num_dense)).astype(np.float32)
    lin = Linear(vocab, num_dense, slots=slots, table_init="uniform")
    params = lin.init(jax.random.key(0), dense, ids)["params"]
    got = lin.apply({"params": params}, dense, ids)
    table = np.asarray(params["embeddings"]["table"], np.float64)[:, 0]
    off = np.repeat([0, 3, 7], slots)
    want = np.array([sum(table[i + o] for i, o in zip(row, off, strict=True) if i >= 0) for row in ids])
    if num_dense:
        want = want + dense.astype(np.float64) @ np.asarray(params["dense"], np.float64)
    else:
        assert "dense" not in params
    np.testing.assert_allclose(got, want, **TOL)


def test_deep_input_concatenates_flat_embeddings_and_dense(emb):
    dense = np.ones((B, 2), np.float32)
    got = deep_input(jnp.asarray(emb), jnp.asarray(dense))
    np.testing.assert_array_equal(got, np.concatenate([emb.reshape(B, -1), dense], axis=1))
    np.testing.assert_array_equal(deep_input(jnp.asarray(emb), jnp.zeros((B, 0))), emb.reshape(B, -1))


@pytest.mark.parametrize("weight_init, w_std, b_bound", [
    ("normal", 1e-4, 1 / np.sqrt(512)),  # DeepCTR-Torch DNN: N(0, 1e-4) weights, torch default U(+-1/sqrt(fan_in)) bias
    ("torch", 1 / np.sqrt(512) / np.sqrt(3), 1 / np.sqrt(512)),  # U(+-1/sqrt(fan_in)) has std bound / sqrt(3)
])
def test_mlp_init_schemes_and_module_init_still_works(weight_init, w_std, b_bound):
    # MLP.init is flax's Module.init (an attribute named "init" used to shadow it)
    mlp = MLP((512, 256), weight_init=weight_init)
    p = mlp.init(jax.random.key(0), jnp.zeros((2, 512)))["params"]
    w, b = np.asarray(p["Dense_0"]["kernel"], np.float64), np.asarray(p["Dense_0"]["bias"], np.float64)
    assert w.shape == (512, 512) and w.std() == pytest.approx(w_std, rel=0.01)  # 262k draws: sd error ~0.15%
    assert np.abs(b).max() <= b_bound and np.abs(b).max() > 0.9 * b_bound
    with pytest.raises(ValueError, match="weight_init"):
        MLP((4,), weight_init="glorot").init(jax.random.key(0), jnp.zeros((1, 3)))
