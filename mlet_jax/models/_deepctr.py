"""What the six DeepCTR-Torch models share: inputs, the first-order part, the DNN, the output bias.

Defaults are DeepCTR-Torch 0.2.x's, as the MLET authors ran them: ReLU DNNs without dropout or batch norm, DNN
weights N(0, 1e-4), a bias-free logit head per part, one zero-initialized output bias, and a first-order part over
sparse and dense features whose weights start N(0, 1e-4). MLET factorizes only the embeddings that feed the
interaction and DNN parts (module ``embeddings``); the first-order weights (``linear``) stay a plain table.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlet_jax.embeddings import EmbeddingStage, Features
from mlet_jax.models.base import CTRModel
from mlet_jax.models.layers import MLP


class DeepCTRModel(CTRModel):
    """Common attributes and helpers; subclasses define ``__call__`` and their own hyper-parameters.

    Attributes (beyond :class:`~mlet_jax.models.base.CTRModel`'s):
        dnn: DNN hidden widths (per-model default).
        dnn_dropout: dropout after every DNN layer while training (DeepCTR ``dnn_dropout``; default 0).
        use_linear: include the first-order part (DeepCTR 0.2.x includes it in every model here).
        linear_init, linear_std: first-order table init, ``"normal"`` N(0, std) (DeepCTR) or ``"uniform"``
            U(+-1/sqrt(n_field)).
    """

    dnn: tuple[int, ...] = (256, 128)
    dnn_dropout: float = 0.0
    use_linear: bool = True
    linear_init: str = "normal"
    linear_std: float = 1e-4

    def embedding_stage(self, **kw) -> EmbeddingStage:
        """The tables: embeddings plus, with ``use_linear``, the width-1 first-order table and dense weights."""
        kw.setdefault("parent", None)
        return EmbeddingStage(tuple(self.vocab_sizes), self.embedding, self.num_dense, self.slots, self.pooling,
                              self.use_linear, self.linear_init, self.linear_std, self.param_dtype, self.row_multiple,
                              **kw)

    def first_order(self, features: Features) -> jax.Array:
        """The first-order logit plus the output bias, ``[B]``."""
        bias = self.param("bias", nn.initializers.zeros, (1,), self.param_dtype)
        logit_B = jnp.broadcast_to(bias[0], (features.emb_BxFxD.shape[0],))
        if self.use_linear:
            logit_B = logit_B + features.first_B
        return logit_B

    def deep(self, x_BxI: jax.Array, train: bool) -> jax.Array:
        """DeepCTR's DNN: ReLU after every layer (dropout after each when training)."""
        return MLP(self.dnn, weight_init="normal", dropout=self.dnn_dropout, param_dtype=self.param_dtype,
                   name="dnn")(x_BxI, train=train)
