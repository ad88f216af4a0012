"""CTR models by name. Every model maps ``(dense [B, num_dense], ids [B, S]) -> logits [B]`` and works with any
:class:`~mlet_jax.embeddings.EmbeddingSpec`."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from mlet_jax.embeddings import EmbeddingSpec, collapse
from mlet_jax.models.dlrm import DLRM

MODELS: dict[str, type[nn.Module]] = {"dlrm": DLRM}


def build_model(name: str, schema, embedding: EmbeddingSpec, **overrides: Any) -> nn.Module:
    """Build model ``name`` for a dataset schema (:class:`mlet_jax.data.Schema`).

    ``overrides`` set model attributes (for example ``bottom_mlp=(256, 128)`` for DLRM on Avazu).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    cls = MODELS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"model {name!r} has no setting(s) {sorted(unknown)}")
    return cls(vocab_sizes=tuple(schema.vocab_sizes), num_dense=schema.num_dense, embedding=embedding,
               slots=schema.bag_sizes, pooling=schema.bag_pooling, **overrides)


def collapse_model(model: nn.Module, params) -> tuple[nn.Module, dict]:
    """The single-layer model and parameters that an MLET-trained model collapses into."""
    if model.embedding.kind == "single":
        return model, params
    return model.clone(embedding=model.embedding.collapsed()), collapse(params, model.vocab_sizes)


__all__ = ["MODELS", "DLRM", "build_model", "collapse_model"]
