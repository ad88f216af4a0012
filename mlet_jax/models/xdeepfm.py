"""xDeepFM with single-layer or MLET embeddings, as in DeepCTR-Torch 0.2.x.

``logit = b + linear(ids, dense) + CIN(e) w_cin + dnn([e_1, ..., e_F, dense]) w_dnn``: the compressed interaction
network with layer sizes (256, 128) and ``split_half`` (``X^k_c = relu(sum_{h,m} W^k_{c,hm} (X^{k-1}_h * X^0_m) +
b^k_c)``, sum-pooled over ``d``), and the DNN (256, 256). The first-order ``linear`` part is an un-factorized width-1
table (never MLET) plus dense weights, as in DeepCTR-Torch and the authors' code.

References:
    Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for Recommender Systems",
    arXiv:1803.05170. Deng et al., MLET, arXiv:2309.15881.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mlet_jax.embeddings import Features
from mlet_jax.models._deepctr import DeepCTRModel
from mlet_jax.models.layers import CIN, deep_input, head


class XDeepFM(DeepCTRModel):
    """xDeepFM: ``(dense [B, num_dense], ids [B, S]) -> logits [B]``."""

    dnn: tuple[int, ...] = (256, 256)
    cin_layer_size: tuple[int, ...] = (256, 128)
    cin_split_half: bool = True

    @nn.compact
    def body(self, features: Features, dense_BxM: jax.Array, *, train: bool = False) -> jax.Array:
        emb_BxFxD = features.emb_BxFxD
        logit_B = self.first_order(features)
        if self.cin_layer_size:
            cin_BxM = CIN(self.cin_layer_size, self.cin_split_half, self.param_dtype, name="cin")(emb_BxFxD)
            logit_B = logit_B + head(cin_BxM, "cin_linear", self.param_dtype)
        if self.dnn:
            logit_B = logit_B + head(self.deep(deep_input(emb_BxFxD, dense_BxM), train), "dnn_linear",
                                     self.param_dtype)
        return logit_B
