"""The model zoo: shapes, parameter counts, gradient flow, MLET collapse, determinism, registry and presets."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlet_jax.data.base import Schema
from mlet_jax.embeddings import EmbeddingSpec, count_params
from mlet_jax.models import MODELS, build_model, collapse_model
from mlet_jax.models.presets import paper_embedding, paper_optimizer
from mlet_jax.training import TrainConfig

VOCAB = (5, 7, 11)
F, N, D, K = 3, 23, 4, 6  # fields, total rows, embedding dim, MLET inner dim
DNN = (8, 6)
# Small settings per model (the defaults are DeepCTR-Torch's; these keep the tests fast and the counts by hand short).
SMALL = {
    "dlrm": dict(bottom_mlp=(8,), top_mlp=(8,)),
    "dcn": dict(dnn=DNN, cross_num=2),
    "deepfm": dict(dnn=DNN),
    "nfm": dict(dnn=DNN),
    "autoint": dict(dnn=DNN, att_layer_num=2, att_head_num=2, att_embedding_size=3),
    "xdeepfm": dict(dnn=DNN, cin_layer_size=(6, 4)),
    "wdl": dict(dnn=DNN),
}
KINDS = ("single", "mlet")


def mlp(n_in, widths):
    total = 0
    for w in widths:
        total += n_in * w + w
        n_in = w
    return total


def expected_count(name: str, kind: str, nd: int) -> int:
    """Scalars in the small model, counted by hand from each architecture's definition."""
    emb = N * D if kind == "single" else N * K + F * K * D
    x0 = F * D + nd  # DNN input: flattened embeddings and dense features
    first_order = N + nd + 1  # width-1 table, dense weights, output bias
    if name == "dlrm":
        bottom = mlp(nd, (8, D)) if nd else 0
        n_vec = F + (1 if nd else 0)
        top_in = (D if nd else 0) + n_vec * (n_vec - 1) // 2
        return emb + bottom + mlp(top_in, (8, 1))
    if name == "dcn":
        return emb + first_order + 2 * 2 * x0 + mlp(x0, DNN) + (x0 + DNN[-1])
    if name in ("deepfm", "wdl"):
        return emb + first_order + mlp(x0, DNN) + DNN[-1]
    if name == "nfm":
        return emb + first_order + mlp(D + nd, DNN) + DNN[-1]
    if name == "autoint":
        ah = 3 * 2
        att = 4 * D * ah + 4 * ah * ah  # Q, K, V, residual per layer
        return emb + first_order + att + mlp(x0, DNN) + (F * ah + DNN[-1])
    if name == "xdeepfm":
        cin = (F * F * 6 + 6) + (3 * F * 4 + 4)  # layer 2 reads the 3 kept maps of layer 1
        return emb + first_order + cin + (3 + 4) + mlp(x0, DNN) + DNN[-1]
    raise AssertionError(name)


def spec(kind: str, **kw) -> EmbeddingSpec:
    return EmbeddingSpec(kind=kind, dim=D, inner_dim=K if kind == "mlet" else None, projection_std=0.5, **kw)


def make(name: str, kind: str, nd: int = 2, **kw):
    schema = Schema(field_names=("a", "b", "c"), vocab_sizes=VOCAB, dense_names=tuple(f"x{i}" for i in range(nd)))
    return build_model(name, schema, spec(kind), **{**SMALL[name], **kw})


def batch(nd: int = 2, b: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, v, b) for v in VOCAB], axis=1).astype(np.int32)
    return {"dense": rng.standard_normal((b, nd)).astype(np.float32), "ids": ids,
            "label": (rng.random(b) < 0.5).astype(np.float32)}


# These graphs are tiny: running them op by op compiles each primitive once per shape, and the models share most
# shapes, so the whole file compiles far less than one jit per model and test would.


@functools.cache
def init(name: str, kind: str, nd: int = 2, seed: int = 0):
    model = make(name, kind, nd)
    b = batch(nd)
    return model, model.init(jax.random.key(seed), b["dense"], b["ids"])["params"]


def apply(model, params, b):
    return model.apply({"params": params}, b["dense"], b["ids"])


def bce(model, params, b):
    z = apply(model, params, b)
    return jnp.mean(jax.nn.softplus(z) - b["label"] * z)


CASES = [(m, k) for m in MODELS for k in KINDS]


def test_registry_names_the_seven_models():
    assert sorted(MODELS) == sorted(["dlrm", "dcn", "deepfm", "nfm", "autoint", "xdeepfm", "wdl"])


@pytest.mark.parametrize("name,kind", CASES)
@pytest.mark.parametrize("nd", [2, 0])
def test_shape_finite_and_parameter_count(name, kind, nd):
    model, params = init(name, kind, nd)
    logits = apply(model, params, batch(nd))
    assert logits.shape == (16,) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert count_params(params) == expected_count(name, kind, nd)


@pytest.mark.parametrize("name,kind", CASES)
def test_gradients_reach_every_parameter(name, kind):
    model, params = init(name, kind)
    grads = jax.grad(bce, argnums=1)(model, params, batch(b=64, seed=1))
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("name", list(MODELS))
def test_collapsed_mlet_model_reproduces_logits(name):
    model, params = init(name, "mlet")
    single, collapsed = collapse_model(model, params)
    assert single.embedding.kind == "single"
    assert collapsed["embeddings"]["table"].shape == (N, D) and "projection" not in collapsed["embeddings"]
    if "linear" in params:  # first-order weights are never factorized, so they pass through unchanged
        np.testing.assert_array_equal(collapsed["linear"]["embeddings"]["table"],
                                      params["linear"]["embeddings"]["table"])
    b = batch(b=64, seed=2)
    np.testing.assert_allclose(apply(single, collapsed, b), apply(model, params, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kind", CASES)
def test_deterministic_under_a_fixed_seed(name, kind):
    model, p0 = init(name, kind)
    b = batch()
    p1 = model.init(jax.random.key(0), b["dense"], b["ids"])["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, p0, p1)
    np.testing.assert_array_equal(apply(model, p0, b), apply(model, p1, b))
    p2 = model.init(jax.random.key(1), b["dense"], b["ids"])["params"]
    assert not np.array_equal(p0["embeddings"]["table"], p2["embeddings"]["table"])


@pytest.mark.parametrize("name", [n for n in MODELS if n != "dlrm"])
def test_first_order_part_is_an_unfactorized_table(name):
    model, params = init(name, "mlet")
    assert params["linear"]["embeddings"]["table"].shape == (N, 1)
    assert "projection" not in params["linear"]["embeddings"]
    assert params["linear"]["dense"].shape == (2,)
    b = batch()
    shapes = jax.eval_shape(lambda: model.clone(use_linear=False).init(jax.random.key(0), b["dense"], b["ids"]))
    assert "linear" not in shapes["params"]


def test_dropout_is_active_only_in_training():
    model = make("deepfm", "single", dnn_dropout=0.5)
    b = batch()
    params = model.init(jax.random.key(0), b["dense"], b["ids"])["params"]
    params = jax.tree_util.tree_map(lambda x: x * 100.0 if x.ndim == 2 and x.shape[1] > 1 else x, params)
    f = lambda p, key, train: model.apply({"params": p}, b["dense"], b["ids"], train=train, rngs={"dropout": key})
    ev = f(params, jax.random.key(0), False)
    np.testing.assert_array_equal(ev, f(params, jax.random.key(1), False))
    assert not np.allclose(f(params, jax.random.key(0), True), ev)


def test_bag_fields_pool_in_the_linear_part_and_embeddings():
    schema = Schema(field_names=("a", "b", "c"), vocab_sizes=VOCAB, dense_names=("x",), bag_sizes=(1, 3, 1),
                    bag_pooling="mean")
    model = build_model("deepfm", schema, spec("mlet"), dnn=DNN)
    ids = np.array([[1, 0, 6, -1, 3], [4, -1, -1, -1, 10]], np.int32)
    dense = np.array([[0.5], [-2.0]], np.float32)
    variables = model.init(jax.random.key(0), dense, ids)
    features = model.apply(variables, dense, ids, method=lambda m, d, i: m.tables(d, i))
    # numpy float64: field f's rows start at sum(VOCAB[:f]); a bag's vector is the mean of its non-padding (-1) ids'
    # rows of table @ projection[f] (zero when empty); the first-order part sums each field's pooled width-1 rows
    # plus dense @ w
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), variables["params"])
    offsets, cols = np.cumsum((0,) + VOCAB[:-1]), [(0,), (1, 2, 3), (4,)]
    emb, first = np.zeros((2, 3, 4)), dense.astype(np.float64) @ p["linear"]["dense"]
    for b in range(2):
        for f, c in enumerate(cols):
            rows = [offsets[f] + ids[b, j] for j in c if ids[b, j] >= 0]
            if not rows:  # an empty bag pools to zero
                continue
            emb[b, f] = (p["embeddings"]["table"][rows] @ p["embeddings"]["projection"][f]).mean(axis=0)
            first[b] += p["linear"]["embeddings"]["table"][rows, 0].mean()
    np.testing.assert_allclose(features.emb_BxFxD, emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features.first_B, first, rtol=1e-5, atol=1e-6)
    logits = model.apply(variables, dense, ids)
    assert logits.shape == (2,) and np.isfinite(np.asarray(logits)).all()


def test_build_model_rejects_unknown_names_and_settings():
    schema = Schema(field_names=("a",), vocab_sizes=(3,), dense_names=())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("fm", schema, spec("single"))
    with pytest.raises(ValueError, match="cross_num"):
        build_model("deepfm", schema, spec("single"), cross_num=3)


def test_deepctr_defaults():
    defaults = {n: {f.name: f.default for f in dataclasses.fields(MODELS[n])} for n in MODELS}
    assert defaults["dcn"]["dnn"] == (128, 128) and defaults["dcn"]["cross_num"] == 2
    assert defaults["deepfm"]["dnn"] == (256, 128) and defaults["wdl"]["dnn"] == (256, 128)
    assert defaults["nfm"]["dnn"] == (128, 128) and defaults["nfm"]["bi_dropout"] == 0
    a = defaults["autoint"]
    assert (a["att_layer_num"], a["att_head_num"], a["att_embedding_size"], a["att_res"], a["dnn"]) == (
        3, 2, 8, True, (256, 128))
    x = defaults["xdeepfm"]
    assert (x["cin_layer_size"], x["cin_split_half"], x["dnn"]) == ((256, 128), True, (256, 256))
    assert all(defaults[n]["dnn_dropout"] == 0 for n in MODELS if n != "dlrm")


def test_paper_presets():
    assert paper_embedding("dlrm", "mlet", 8, 64).projection_std == 0.25
    s = paper_embedding("dcn", "mlet", 8, 64)
    assert (s.projection_std, s.table_init, s.inner_dim) == (0.5, "uniform", 64)
    assert paper_embedding("nfm").table_init == "uniform"  # the baseline too
    assert paper_optimizer("dlrm").name == "sgd" and paper_optimizer("dlrm").lr == 0.2
    assert paper_optimizer("xdeepfm").name == "adagrad" and paper_optimizer("xdeepfm").lr == 0.02
    cfg = TrainConfig.paper("autoint")
    assert cfg.table_optimizer is None and cfg.sparse and cfg.loss_reduction == "sum"
    l2 = TrainConfig.paper("autoint", embedding_l2=1e-5)
    assert l2.table_optimizer.weight_decay == 2e-5 and not l2.sparse
    assert TrainConfig.paper("dlrm").loss_reduction == "mean" and TrainConfig.paper("dlrm").optimizer.lr == 0.2


def test_dlrm_forward_mode_with_plain_interaction_matches_the_custom_vjp():
    """``interaction_vjp=False`` lets ``jax.jvp`` through DLRM; its directional derivative ``<J v, w>`` along a
    random direction ``v`` of every parameter (tables and MLPs) equals ``<v, J^T w>`` from the default model's
    reverse mode (the hand-written VJP), and the default refuses jvp."""
    from mlet_jax.models.dlrm import DLRM

    kw = dict(vocab_sizes=(5, 20, 50), num_dense=2, embedding=EmbeddingSpec("single", 4), bottom_mlp=(8,),
              top_mlp=(8,))
    fast, plain = DLRM(**kw), DLRM(**kw, interaction_vjp=False)
    rng = np.random.default_rng(0)
    dense = jnp.asarray(rng.standard_normal((16, 2)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 5, (16, 3)), jnp.int32)
    params = fast.init(jax.random.key(0), dense, ids)
    v = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    w = jnp.asarray(rng.standard_normal(16), jnp.float32)
    np.testing.assert_array_equal(plain.apply(params, dense, ids), fast.apply(params, dense, ids))
    _, jv = jax.jvp(lambda p: plain.apply(p, dense, ids), (params,), (v,))
    _, vjp = jax.vjp(lambda p: fast.apply(p, dense, ids), params)
    vjw = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(vjp(w)[0]),
                                              strict=True))
    np.testing.assert_allclose(float(jnp.vdot(jv, w)), float(vjw), rtol=1e-5)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda p: fast.apply(p, dense, ids), (params,), (v,))
