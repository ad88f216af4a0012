"""Wide & Deep (WDL) with single-layer or MLET embeddings, as in DeepCTR-Torch 0.2.x.

``logit = b + (sum_f w[id_f] + dense @ w_dense) + dnn([e_1, ..., e_F, dense]) w_out`` with the DNN (256, 128). The
wide part is an un-factorized width-1 table over the categorical ids (never MLET) plus dense weights, as in
DeepCTR-Torch and the authors' code; only the deep part's embeddings are factorized.

References:
    Cheng et al., "Wide & Deep Learning for Recommender Systems", arXiv:1606.07792. Deng et al., MLET,
    arXiv:2309.15881.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mlet_jax.embeddings import Features
from mlet_jax.models._deepctr import DeepCTRModel
from mlet_jax.models.layers import deep_input, head


class WDL(DeepCTRModel):
    """Wide & Deep: ``(dense [B, num_dense], ids [B, S]) -> logits [B]``."""

    dnn: tuple[int, ...] = (256, 128)

    @nn.compact
    def body(self, features: Features, dense_BxM: jax.Array, *, train: bool = False) -> jax.Array:
        emb_BxFxD = features.emb_BxFxD
        logit_B = self.first_order(features)
        if self.dnn:
            logit_B = logit_B + head(self.deep(deep_input(emb_BxFxD, dense_BxM), train), "dnn_linear",
                                     self.param_dtype)
        return logit_B
