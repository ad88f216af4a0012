"""What the six DeepCTR-Torch models share: inputs, the first-order part, the DNN, the output bias.

Defaults are DeepCTR-Torch 0.2.x's, as the MLET authors ran them: ReLU DNNs without dropout or batch norm, DNN
weights N(0, 1e-4), a bias-free logit head per part, one zero-initialized output bias, and a first-order part over
sparse and dense features whose weights start N(0, 1e-4). MLET factorizes only the embeddings that feed the
interaction and DNN parts (module ``embeddings``); the first-order weights (``linear``) stay a plain table.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlet_jax.embeddings import Embeddings, EmbeddingSpec
from mlet_jax.models.layers import MLP, Linear


class DeepCTRModel(nn.Module):
    """Common attributes and helpers; subclasses define ``__call__`` and their own hyper-parameters.

    Attributes:
        vocab_sizes: rows per categorical field.
        num_dense: dense features (0 is allowed).
        embedding: the embedding parameterization (single-layer or MLET).
        slots: slots per field for bag fields (``None``: one each); ``pooling``: ``"sum"`` or ``"mean"``.
        param_dtype: parameter dtype.
        dnn: DNN hidden widths (per-model default).
        dnn_dropout: dropout after every DNN layer while training (DeepCTR ``dnn_dropout``; default 0).
        use_linear: include the first-order part (DeepCTR 0.2.x includes it in every model here).
        linear_init, linear_std: first-order table init, ``"normal"`` N(0, std) (DeepCTR) or ``"uniform"``
            U(+-1/sqrt(n_field)).
    """

    vocab_sizes: tuple[int, ...]
    num_dense: int
    embedding: EmbeddingSpec
    slots: tuple[int, ...] | None = None
    pooling: str = "sum"
    param_dtype: Any = jnp.float32
    dnn: tuple[int, ...] = (256, 128)
    dnn_dropout: float = 0.0
    use_linear: bool = True
    linear_init: str = "normal"
    linear_std: float = 1e-4

    def embed(self, ids_BxS: jax.Array, ids_are_rows: bool) -> jax.Array:
        """``[B, F, d]`` embeddings (the module named ``embeddings``)."""
        return Embeddings(self.vocab_sizes, self.embedding, self.slots, self.pooling, self.param_dtype,
                          name="embeddings")(ids_BxS, ids_are_rows=ids_are_rows)

    def first_order(self, dense_BxN: jax.Array, ids_BxS: jax.Array, ids_are_rows: bool) -> jax.Array:
        """The first-order logit plus the output bias, ``[B]``."""
        bias = self.param("bias", nn.initializers.zeros, (1,), self.param_dtype)
        logit_B = jnp.broadcast_to(bias[0], (ids_BxS.shape[0],))
        if self.use_linear:
            logit_B = logit_B + Linear(self.vocab_sizes, self.num_dense, self.slots, self.pooling, self.linear_init,
                                       self.linear_std, self.param_dtype, name="linear")(
                dense_BxN, ids_BxS, ids_are_rows=ids_are_rows)
        return logit_B

    def deep(self, x_BxN: jax.Array, train: bool) -> jax.Array:
        """DeepCTR's DNN: ReLU after every layer (dropout after each when training)."""
        return MLP(self.dnn, weight_init="normal", dropout=self.dnn_dropout, param_dtype=self.param_dtype,
                   name="dnn")(x_BxN, train=train)
