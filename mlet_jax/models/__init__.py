"""CTR models by name. Every model maps ``(dense [B, num_dense], ids [B, S]) -> logits [B]`` and works with any
:class:`~mlet_jax.embeddings.EmbeddingSpec`.

``dlrm`` follows the DLRM reference; ``dcn``, ``deepfm``, ``nfm``, ``autoint``, ``xdeepfm`` and ``wdl`` follow
DeepCTR-Torch 0.2.x, the library the MLET paper used. :mod:`mlet_jax.models.presets` holds the paper's settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
from flax import traverse_util

from mlet_jax.embeddings import EmbeddingSpec, collapse
from mlet_jax.models.autoint import AutoInt
from mlet_jax.models.dcn import DCN
from mlet_jax.models.deepfm import DeepFM
from mlet_jax.models.dlrm import DLRM
from mlet_jax.models.nfm import NFM
from mlet_jax.models.presets import paper_embedding, paper_optimizer
from mlet_jax.models.wdl import WDL
from mlet_jax.models.xdeepfm import XDeepFM

MODELS: dict[str, type[nn.Module]] = {
    "dlrm": DLRM, "dcn": DCN, "deepfm": DeepFM, "nfm": NFM, "autoint": AutoInt, "xdeepfm": XDeepFM, "wdl": WDL,
}


def build_model(name: str, schema, embedding: EmbeddingSpec, **overrides: Any) -> nn.Module:
    """Build model ``name`` for a dataset schema (:class:`mlet_jax.data.Schema`).

    ``overrides`` set model attributes (for example ``bottom_mlp=(256, 128)`` for DLRM on Avazu, ``dnn=(64, 64)``
    for a DeepCTR model).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    cls = MODELS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "row_multiple"}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"model {name!r} has no setting(s) {sorted(unknown)}; it has {sorted(fields)}")
    return cls(vocab_sizes=tuple(schema.vocab_sizes), num_dense=schema.num_dense, embedding=embedding,
               slots=schema.bag_sizes, pooling=schema.bag_pooling, **overrides)


def strip_padding(model: nn.Module, params) -> tuple[nn.Module, dict]:
    """The unpadded model and parameters: tables padded to a device multiple (``row_multiple``) lose the padding
    rows (never indexed, so the logits are the same)."""
    if model.row_multiple == 1:
        return model, params
    n = int(sum(model.embedding_stage().table_sizes))  # OOV rows included (mlet_jax.oov)
    flat = traverse_util.flatten_dict(dict(params))
    for path in model.embedding_stage().table_paths:
        flat[path] = flat[path][:n]
    return model.clone(row_multiple=1), traverse_util.unflatten_dict(flat)


def collapse_model(model: nn.Module, params, strip: bool = True) -> tuple[nn.Module, dict]:
    """The single-layer, unpadded model and parameters that a trained model serves with.

    Every sub-tree holding an MLET ``table`` and its ``projection`` is multiplied out; first-order (``linear``)
    tables are single-layer already and stay as they are; device padding rows are dropped (``strip=False`` keeps
    them, to run the collapsed model on the same mesh).
    """
    if model.embedding.kind != "single":
        sizes = model.embedding_stage().table_sizes  # OOV rows included (mlet_jax.oov)
        model, params = model.clone(embedding=model.embedding.collapsed()), collapse(params, sizes)
    return strip_padding(model, params) if strip else (model, params)


__all__ = ["MODELS", "AutoInt", "DCN", "DLRM", "DeepFM", "NFM", "WDL", "XDeepFM", "build_model", "collapse_model",
           "paper_embedding", "paper_optimizer", "strip_padding"]
