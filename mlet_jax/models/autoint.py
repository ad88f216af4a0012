"""AutoInt+ (self-attentive interactions plus a DNN) with single-layer or MLET embeddings, as in DeepCTR-Torch 0.2.x.

``H^0 = [e_1, ..., e_F]``; ``att_layer_num = 3`` interacting layers, each
``H^{l+1} = relu(concat_h softmax(H^l W_Q^h (H^l W_K^h)^T) H^l W_V^h + H^l W_res)`` with ``att_head_num = 2`` heads
of width ``att_embedding_size = 8``; ``logit = b + linear(ids, dense) + [flatten(H^L), dnn([e, dense])] w_out`` with
the DNN (256, 128). The first-order ``linear`` part is an un-factorized width-1 table (never MLET) plus dense weights,
as in DeepCTR-Torch 0.2.x and the authors' code. Attention sees only the categorical fields; dense features enter the
DNN and the linear part.

References:
    Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural Networks",
    arXiv:1810.11921. Deng et al., MLET, arXiv:2309.15881.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlet_jax.embeddings import Features
from mlet_jax.models._deepctr import DeepCTRModel
from mlet_jax.models.layers import InteractingLayer, deep_input, head


class AutoInt(DeepCTRModel):
    """AutoInt+: ``(dense [B, num_dense], ids [B, S]) -> logits [B]``."""

    dnn: tuple[int, ...] = (256, 128)
    att_layer_num: int = 3
    att_head_num: int = 2
    att_embedding_size: int = 8
    att_res: bool = True

    @nn.compact
    def body(self, features: Features, dense_BxM: jax.Array, *, train: bool = False) -> jax.Array:
        if not self.dnn and not self.att_layer_num:
            raise ValueError("AutoInt needs a DNN or at least one interacting layer")
        emb_BxFxD = features.emb_BxFxD
        parts = []
        if self.att_layer_num:
            h_BxFxE = emb_BxFxD
            for i in range(self.att_layer_num):
                h_BxFxE = InteractingLayer(self.att_embedding_size, self.att_head_num, self.att_res,
                                           self.param_dtype, name=f"interacting_{i}")(h_BxFxE)
            parts.append(h_BxFxE.reshape(h_BxFxE.shape[0], -1))
        if self.dnn:
            parts.append(self.deep(deep_input(emb_BxFxD, dense_BxM), train))
        out_B = head(jnp.concatenate(parts, axis=1), "dnn_linear", self.param_dtype)
        return self.first_order(features) + out_B
