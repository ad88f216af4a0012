"""What every CTR model is: an embedding stage (all tables) followed by a model body that never sees a table.

``CTRModel.__call__(dense [B, M], ids [B, S]) -> logits [B]`` runs :class:`~mlet_jax.embeddings.EmbeddingStage` and
then ``body(features, dense)``. The stage shares the model's scope (``flax.linen.share_scope``), so parameter paths
are the model's own (``embeddings/table``, ``linear/embeddings/table``, ``top_mlp/...``) and
``model.apply(variables, features, dense, method="body")`` runs the body alone: the row-sparse step
(:mod:`mlet_jax.row_sparse`) computes the features from the batch's gathered rows and hands them to the body.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlet_jax.embeddings import EmbeddingSpec, EmbeddingStage, Features


class CTRModel(nn.Module):
    """Base of the CTR models.

    Attributes:
        vocab_sizes: rows per categorical field.
        num_dense: dense features (0 is allowed).
        embedding: the embedding parameterization (single-layer or MLET).
        slots: slots per field for bag fields (``None``: one each); ``pooling``: ``"sum"`` or ``"mean"``.
        param_dtype: parameter dtype.
        row_multiple: tables are padded to a multiple of this many rows (the device count when their rows are split
            over devices, :class:`mlet_jax.training.Trainer` sets it); padding rows are never indexed.
    """

    vocab_sizes: tuple[int, ...]
    num_dense: int
    embedding: EmbeddingSpec
    slots: tuple[int, ...] | None = None
    pooling: str = "sum"
    param_dtype: Any = jnp.float32
    row_multiple: int = 1

    def embedding_stage(self, **kw) -> EmbeddingStage:
        """The stage that owns this model's tables (free-standing: ``parent=None`` unless given).

        Subclasses with a first-order part extend it.
        """
        kw.setdefault("parent", None)
        return EmbeddingStage(tuple(self.vocab_sizes), self.embedding, self.num_dense, self.slots, self.pooling,
                              param_dtype=self.param_dtype, row_multiple=self.row_multiple, **kw)

    def setup(self):
        self.tables = self.embedding_stage(parent=self)
        nn.share_scope(self, self.tables)

    def __call__(self, dense_BxM: jax.Array, ids_BxS: jax.Array, *, train: bool = False) -> jax.Array:
        return self.body(self.tables(dense_BxM, ids_BxS), dense_BxM, train=train)

    def body(self, features: Features, dense_BxM: jax.Array, *, train: bool = False) -> jax.Array:
        """``(features, dense [B, M]) -> logits [B]``; subclasses implement it as their ``nn.compact`` method."""
        raise NotImplementedError
