"""Deep & Cross Network (DCN) with single-layer or MLET embeddings, as in DeepCTR-Torch 0.2.x.

``x_0 = [e_1, ..., e_F, dense]`` (width ``F d + num_dense``); the cross network ``x_{l+1} = x_0 x_l^T w_l + b_l +
x_l`` (vector parameterization, ``cross_num = 2`` layers) and the DNN (128, 128) both read ``x_0``;
``logit = b + linear(ids, dense) + [x_L, dnn(x_0)] w_out``. The first-order ``linear`` part is an un-factorized
width-1 table (never MLET) plus dense weights, as in DeepCTR-Torch 0.2.x and the authors' code.

References:
    Wang et al., "Deep & Cross Network for Ad Click Predictions", arXiv:1708.05123. Deng et al., MLET,
    arXiv:2309.15881.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlet_jax.embeddings import Features
from mlet_jax.models._deepctr import DeepCTRModel
from mlet_jax.models.layers import CrossNet, deep_input, head


class DCN(DeepCTRModel):
    """DCN: ``(dense [B, num_dense], ids [B, S]) -> logits [B]``. ``cross_num``: cross layers (0 disables them)."""

    dnn: tuple[int, ...] = (128, 128)
    cross_num: int = 2

    @nn.compact
    def body(self, features: Features, dense_BxM: jax.Array, *, train: bool = False) -> jax.Array:
        if not self.dnn and not self.cross_num:
            raise ValueError("DCN needs a DNN or at least one cross layer")
        emb_BxFxD = features.emb_BxFxD
        x0_BxI = deep_input(emb_BxFxD, dense_BxM)
        parts = []
        if self.cross_num:
            parts.append(CrossNet(self.cross_num, self.param_dtype, name="crossnet")(x0_BxI))
        if self.dnn:
            parts.append(self.deep(x0_BxI, train))
        out_B = head(jnp.concatenate(parts, axis=1), "dnn_linear", self.param_dtype)
        return self.first_order(features) + out_B
