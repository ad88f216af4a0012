"""benchmarks/parity_deepctr.py's weight mapping, without torch: DeepCTR-Torch-layout DCN weights, mapped into
mlet_jax's DCN, give the logits of a numpy float64 transcription of DeepCTR-Torch's DCN forward."""

from __future__ import annotations

import jax
import numpy as np

from benchmarks.parity_deepctr import to_mlet_params
from mlet_jax.data.base import Schema
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models import build_model


def test_dcn_weights_from_deepctr_layout_give_deepctr_logits():
    rng = np.random.default_rng(0)
    vocab, d, n_dense, hidden, b = (5, 7, 3), 4, 2, (6, 5), 9
    f = len(vocab)
    n_in = f * d + n_dense
    w = {f"w/embedding_dict.C{i + 1}.weight": rng.standard_normal((v, d)) for i, v in enumerate(vocab)}
    w |= {f"w/linear_model.embedding_dict.C{i + 1}.weight": rng.standard_normal((v, 1)) for i, v in enumerate(vocab)}
    w["w/linear_model.weight"] = rng.standard_normal((n_dense, 1))
    w["w/dnn.linears.0.weight"], w["w/dnn.linears.0.bias"] = rng.standard_normal((6, n_in)), rng.standard_normal(6)
    w["w/dnn.linears.1.weight"], w["w/dnn.linears.1.bias"] = rng.standard_normal((5, 6)), rng.standard_normal(5)
    w["w/crossnet.kernels"] = rng.standard_normal((2, n_in, 1)) * 0.3  # torch layout [layers, in, 1]
    w["w/crossnet.bias"] = rng.standard_normal((2, n_in, 1))
    w["w/dnn_linear.weight"] = rng.standard_normal((1, n_in + hidden[-1]))
    w["w/out.bias"] = rng.standard_normal(1)
    ids = np.stack([rng.integers(0, v, b) for v in vocab], 1).astype(np.int32)
    dense = rng.random((b, n_dense))

    # DeepCTR-Torch 0.3.0 DCN.forward, transcribed: linear_model + dnn_linear([crossnet(x0), dnn(x0)]) + out.bias
    emb = np.concatenate([w[f"w/embedding_dict.C{i + 1}.weight"][ids[:, i]] for i in range(f)], axis=1)
    x0 = np.concatenate([emb, dense], axis=1)
    lin = sum(w[f"w/linear_model.embedding_dict.C{i + 1}.weight"][ids[:, i], 0] for i in range(f))
    lin = lin + dense @ w["w/linear_model.weight"][:, 0]
    xl = x0
    for i in range(2):
        xl = x0 * (xl @ w["w/crossnet.kernels"][i])[:, :1] + w["w/crossnet.bias"][i, :, 0] + xl
    h = x0
    for j in range(2):
        h = np.maximum(h @ w[f"w/dnn.linears.{j}.weight"].T + w[f"w/dnn.linears.{j}.bias"], 0)
    want = lin + np.concatenate([xl, h], axis=1) @ w["w/dnn_linear.weight"][0] + w["w/out.bias"][0]

    schema = Schema(tuple(f"C{i + 1}" for i in range(f)), vocab, tuple(f"I{i + 1}" for i in range(n_dense)))
    net = build_model("dcn", schema, EmbeddingSpec(kind="single", dim=d), dnn=hidden)
    params = jax.tree_util.tree_map(np.float32, to_mlet_params(w, f, n_layers=2, cross_layers=2))
    got = net.apply({"params": params}, dense.astype(np.float32), ids)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
