"""DeepFM with single-layer or MLET embeddings, as in DeepCTR-Torch 0.2.x.

``logit = b + linear(ids, dense) + sum_{i<j} <e_i, e_j> + dnn([e_1, ..., e_F, dense]) w_out`` with the DNN
(256, 128). The FM term is computed as ``0.5 sum_d ((sum_i e_i)^2 - sum_i e_i^2)``. The first-order ``linear`` part is
an un-factorized width-1 table (never MLET) plus dense weights, as in DeepCTR-Torch and the authors' code.

References:
    Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction", arXiv:1703.04247.
    Deng et al., MLET, arXiv:2309.15881.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mlet_jax.embeddings import Features
from mlet_jax.models._deepctr import DeepCTRModel
from mlet_jax.models.layers import deep_input, fm_interaction, head


class DeepFM(DeepCTRModel):
    """DeepFM: ``(dense [B, num_dense], ids [B, S]) -> logits [B]``. ``use_fm``: include the FM term."""

    dnn: tuple[int, ...] = (256, 128)
    use_fm: bool = True

    @nn.compact
    def body(self, features: Features, dense_BxM: jax.Array, *, train: bool = False) -> jax.Array:
        emb_BxFxD = features.emb_BxFxD
        logit_B = self.first_order(features)
        if self.use_fm:
            logit_B = logit_B + fm_interaction(emb_BxFxD)
        if self.dnn:
            logit_B = logit_B + head(self.deep(deep_input(emb_BxFxD, dense_BxM), train), "dnn_linear",
                                     self.param_dtype)
        return logit_B
