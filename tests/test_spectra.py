"""Embedding spectra: singular values of each collapsed table against np.linalg.svd in float64, effective rank and
information abundance against closed forms, and the fit callback's records against the returned parameters."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlet_jax import spectra
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models import build_model
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer, fit

VOCAB = (7, 50, 3, 120)  # field 2 has fewer rows (3) than d: its table has rank 3


def np_entropy_rank(s):
    p = np.asarray(s, np.float64) / np.sum(s)
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


@pytest.mark.parametrize("s, erank, ia", [
    (np.ones(5), 5.0, 5.0),                       # identity: r equal values
    ([3.0, 0.0, 0.0, 0.0], 1.0, 1.0),            # rank 1
    ([2.0, 2.0, 0.0], 2.0, 2.0),                 # two equal, one zero (0 ln 0 = 0)
    ([3.0, 1.0], math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), 4.0 / 3.0),
    ([3.0, 2.0, 1.0], math.exp(-sum(p * math.log(p) for p in (0.5, 1 / 3, 1 / 6))), 2.0),
    (np.zeros(4), 0.0, 0.0),                      # an all-zero table
])
def test_closed_forms(s, erank, ia):
    assert spectra.effective_rank(s) == pytest.approx(erank, rel=1e-12)
    assert spectra.information_abundance(s) == pytest.approx(ia, rel=1e-12)
    assert math.isnan(spectra.effective_rank([1.0, float("nan")]))
    with pytest.raises(ValueError, match=">= 0"):
        spectra.effective_rank([1.0, -0.5])


def _params(rng, kind, k, d, dtype, pad=5):
    n = sum(VOCAB)
    width = k if kind == "mlet" else d
    table = rng.normal(size=(n + pad, width))
    table[n:] = 1e3  # device padding rows: never part of a field (a real table keeps them zero)
    p = {"table": jnp.asarray(table, dtype)}
    if kind == "mlet":
        p["projection"] = jnp.asarray(rng.normal(size=(len(VOCAB), k, d)), dtype)
    return {"embeddings": p, "mlp": {"w": jnp.ones(3, dtype)}}


def _np_reference(params, kind):
    emb = params["embeddings"]
    table = np.asarray(emb["table"], np.float64)
    out, lo = [], 0
    for f, n in enumerate(VOCAB):
        w = table[lo:lo + n]
        if kind == "mlet":
            w = w @ np.asarray(emb["projection"], np.float64)[f]
        out.append(np.linalg.svd(w, compute_uv=False))
        lo += n
    return out


@pytest.mark.parametrize("method", spectra.METHODS)
@pytest.mark.parametrize("kind", ["mlet", "single"])
def test_singular_values_match_numpy_float64(float64, method, kind):
    params = _params(np.random.default_rng(0), kind, k=16, d=4, dtype=jnp.float64)
    got = spectra.table_singular_values(params, VOCAB, method=method)
    for f, (g, want) in enumerate(zip(got, _np_reference(params, kind), strict=True)):
        assert g.shape == (min(VOCAB[f], 4),)
        np.testing.assert_allclose(g, want[: g.size], rtol=1e-9, atol=1e-12 * want[0])
    rec = spectra.spectra_record(params, VOCAB, step=7, method=method)
    assert rec["event"] == "spectra" and rec["step"] == 7 and [f["rows"] for f in rec["fields"]] == list(VOCAB)
    for f, want in zip(rec["fields"], _np_reference(params, kind), strict=True):
        assert f["effective_rank"] == pytest.approx(np_entropy_rank(want), rel=1e-9)
        assert f["information_abundance"] == pytest.approx(want.sum() / want.max(), rel=1e-9)
    assert rec["mean_effective_rank"] == pytest.approx(np.mean([np_entropy_rank(w) for w in
                                                                 _np_reference(params, kind)]), rel=1e-9)


@pytest.mark.parametrize("method, tol", [("gram", 1e-4), ("qr", 1e-5)])
def test_float32_tables_within_float32_accuracy(method, tol):
    params = _params(np.random.default_rng(1), "mlet", k=32, d=8, dtype=jnp.float32)
    for g, want in zip(spectra.table_singular_values(params, VOCAB, method=method), _np_reference(params, "mlet"),
                       strict=True):
        np.testing.assert_allclose(g, want[: g.size], rtol=0, atol=tol * want[0])


def test_collapsed_closed_forms(float64):
    # field 0: W = T P = I_d exactly (T rows e_i, P = [I_d; 0]); field 1: a rank-1 product u v^T
    k, d = 6, 3
    rng = np.random.default_rng(2)
    vocab = (d, 40)
    table = np.zeros((sum(vocab), k))
    table[:d, :d] = np.eye(d)
    table[d:] = np.outer(rng.normal(size=40), rng.normal(size=k))
    proj = np.stack([np.vstack([np.eye(d), np.zeros((k - d, d))]), rng.normal(size=(k, d))])
    params = {"table": jnp.asarray(table), "projection": jnp.asarray(proj)}
    for method in spectra.METHODS:
        eye, rank1 = spectra.table_spectra(params, vocab, method=method)
        np.testing.assert_allclose(eye["singular_values"], np.ones(d), rtol=1e-12)
        assert eye["effective_rank"] == pytest.approx(d, rel=1e-12)
        assert eye["information_abundance"] == pytest.approx(d, rel=1e-12)
        s = np.asarray(rank1["singular_values"])
        assert s[1:].max() <= 1e-6 * s[0]  # the Gram's rounding leaves ~sqrt(eps) * s_1 at most
        assert rank1["effective_rank"] == pytest.approx(1.0, abs=1e-5)
        assert rank1["information_abundance"] == pytest.approx(1.0, abs=1e-5)


def test_bad_arguments():
    params = _params(np.random.default_rng(0), "mlet", k=8, d=4, dtype=jnp.float32)
    with pytest.raises(ValueError, match="method"):
        spectra.table_singular_values(params, VOCAB, method="svd")
    with pytest.raises(ValueError, match="vocab_sizes sum"):
        spectra.table_singular_values(params, (1000,) * 4)
    with pytest.raises(ValueError, match="projection"):
        spectra.table_singular_values(params, VOCAB[:3])  # 4 projections for 3 fields
    with pytest.raises(KeyError, match="embedding table"):
        spectra.table_singular_values({"mlp": {}}, VOCAB)
    with pytest.raises(ValueError, match="every"):
        spectra.SpectraCallback(VOCAB, every=0)


def test_fit_records_spectra_every_n_steps():
    ds = make_synthetic(0, n_train=1200, n_valid=0, n_test=10, vocab_sizes=(7, 50, 300))
    model = build_model("dlrm", ds.schema, EmbeddingSpec("mlet", 4, 8), bottom_mlp=(8,), top_mlp=(8,))
    tr = Trainer(model, TrainConfig(OptimizerSpec("sgd", 0.2)))
    init = jax.tree_util.tree_map(np.array, tr.init(0, {"dense": ds.train.dense[:1], "ids": ds.train.ids[:1],
                                                         "label": ds.train.label[:1]}).params)
    state, hist = fit(tr, ds.train, batch_size=100, seed=0, progress=False, spectra_every=5)
    assert [r["step"] for r in hist.spectra] == [0, 5, 10, 12]  # before the first step, every 5, after the last
    assert [r for r in hist.records if r["event"] == "spectra"] == hist.spectra
    for params, rec in ((init, hist.spectra[0]), (state.params, hist.spectra[-1])):
        emb = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), dict(params["embeddings"]))
        lo = 0
        for f, n in enumerate(model.vocab_sizes):
            want = np.linalg.svd(emb["table"][lo:lo + n] @ emb["projection"][f], compute_uv=False)
            got = rec["fields"][f]["singular_values"]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * want[0])
            lo += n
    assert hist.spectra[-1]["fields"] != hist.spectra[0]["fields"]  # the tables moved


MESH_SCRIPT = """
import json
import numpy as np
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.distributed import make_mesh
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models import build_model
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer, fit
ds = make_synthetic(0, n_train=800, n_valid=0, n_test=10, vocab_sizes=(7, 50, 301))  # 358 rows: padded to 360
model = build_model("dlrm", ds.schema, EmbeddingSpec("mlet", 4, 8), bottom_mlp=(8,), top_mlp=(8,))
cfg = TrainConfig(OptimizerSpec("adagrad", 0.05))
out = {}
for name, mesh in (("one", None), ("mesh", make_mesh(data=4))):
    state, hist = fit(Trainer(model, cfg), ds.train, batch_size=80, progress=False, spectra_every=4, mesh=mesh)
    out[name] = [[f["singular_values"] for f in r["fields"]] for r in hist.spectra]
    out[name + "_rows"] = int(state.params["embeddings"]["table"].shape[0])
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_spectra_on_a_mesh_equal_one_device():
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
           + " --xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", MESH_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    r = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT"))[len("RESULT"):])
    assert r["one_rows"] == 358 and r["mesh_rows"] == 360  # the mesh's padding rows are not part of any field
    assert len(r["one"]) == len(r["mesh"]) == 4  # steps 0, 4, 8, 10
    for a, b in zip(r["one"], r["mesh"], strict=True):
        for sa, sb in zip(a, b, strict=True):
            np.testing.assert_allclose(sb, sa, rtol=0, atol=1e-5 * sa[0])
