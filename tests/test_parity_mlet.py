"""benchmarks/parity_mlet.py's weight mapping, without torch: the authors' MLET weights (DeepCTR-Torch layout,
``embedding_dict.C<i>.0.weight`` [n, k] and ``.1.weight`` [d, k]) mapped into mlet_jax's MLET DCN and DeepFM give the
logits of numpy float64 transcriptions of DeepCTR-Torch 0.3.0's DCN and DeepFM forwards with Sequential embeddings."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from benchmarks.parity_mlet import to_mlet_params
from mlet_jax.data.base import Schema
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models import build_model

VOCAB, D, K, N_DENSE, HIDDEN, B = (5, 7, 3), 4, 6, 2, (6, 5), 9


def _weights(rng, cross: bool):
    f = len(VOCAB)
    n_in = f * D + N_DENSE
    w = {f"w/embedding_dict.C{i + 1}.0.weight": rng.standard_normal((v, K)) for i, v in enumerate(VOCAB)}
    w |= {f"w/embedding_dict.C{i + 1}.1.weight": rng.standard_normal((D, K)) * 0.5 for i in range(f)}
    w |= {f"w/linear_model.embedding_dict.C{i + 1}.weight": rng.standard_normal((v, 1)) for i, v in enumerate(VOCAB)}
    w["w/linear_model.weight"] = rng.standard_normal((N_DENSE, 1))
    w["w/dnn.linears.0.weight"], w["w/dnn.linears.0.bias"] = rng.standard_normal((6, n_in)), rng.standard_normal(6)
    w["w/dnn.linears.1.weight"], w["w/dnn.linears.1.bias"] = rng.standard_normal((5, 6)), rng.standard_normal(5)
    if cross:
        w["w/crossnet.kernels"] = rng.standard_normal((2, n_in, 1)) * 0.3
        w["w/crossnet.bias"] = rng.standard_normal((2, n_in, 1))
        w["w/dnn_linear.weight"] = rng.standard_normal((1, n_in + HIDDEN[-1]))
    else:
        w["w/dnn_linear.weight"] = rng.standard_normal((1, HIDDEN[-1]))
    w["w/out.bias"] = rng.standard_normal(1)
    return w


def _reference(w, ids, dense, model):
    """DeepCTR-Torch 0.3.0's forward with the authors' Sequential(Embedding, Linear(bias=False)) embeddings."""
    f = len(VOCAB)
    e = np.stack([w[f"w/embedding_dict.C{i + 1}.0.weight"][ids[:, i]] @ w[f"w/embedding_dict.C{i + 1}.1.weight"].T
                  for i in range(f)], axis=1)  # [B, F, d]
    x0 = np.concatenate([e.reshape(len(ids), -1), dense], axis=1)
    lin = sum(w[f"w/linear_model.embedding_dict.C{i + 1}.weight"][ids[:, i], 0] for i in range(f))
    lin = lin + dense @ w["w/linear_model.weight"][:, 0]
    h = x0
    for j in range(2):
        h = np.maximum(h @ w[f"w/dnn.linears.{j}.weight"].T + w[f"w/dnn.linears.{j}.bias"], 0)
    if model == "dcn":
        xl = x0
        for i in range(2):
            xl = x0 * (xl @ w["w/crossnet.kernels"][i])[:, :1] + w["w/crossnet.bias"][i, :, 0] + xl
        return lin + np.concatenate([xl, h], axis=1) @ w["w/dnn_linear.weight"][0] + w["w/out.bias"][0]
    fm = 0.5 * np.sum(e.sum(1) ** 2 - (e ** 2).sum(1), axis=1)
    return lin + fm + h @ w["w/dnn_linear.weight"][0] + w["w/out.bias"][0]


@pytest.mark.parametrize("model", ["dcn", "deepfm"])
def test_authors_mlet_weights_give_deepctr_logits(model):
    rng = np.random.default_rng(1)
    w = _weights(rng, cross=model == "dcn")
    ids = np.stack([rng.integers(0, v, B) for v in VOCAB], 1).astype(np.int32)
    dense = rng.random((B, N_DENSE))
    want = _reference(w, ids, dense, model)
    schema = Schema(tuple(f"C{i + 1}" for i in range(len(VOCAB))), VOCAB, tuple(f"I{i + 1}" for i in range(N_DENSE)))
    net = build_model(model, schema, EmbeddingSpec(kind="mlet", dim=D, inner_dim=K), dnn=HIDDEN)
    params = to_mlet_params(w, len(VOCAB), n_layers=2, cross_layers=2 if model == "dcn" else 0)
    shapes = jax.tree_util.tree_map(lambda x: x.shape, net.init(jax.random.key(0), dense[:1].astype(np.float32),
                                                                ids[:1])["params"])
    assert jax.tree_util.tree_map(lambda x: x.shape, params) == shapes
    got = net.apply({"params": jax.tree_util.tree_map(np.float32, params)}, dense.astype(np.float32), ids)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
