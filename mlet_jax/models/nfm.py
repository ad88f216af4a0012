"""Neural Factorization Machine (NFM) with single-layer or MLET embeddings, as in DeepCTR-Torch 0.2.x.

``f_BI = sum_{i<j} e_i * e_j = 0.5 ((sum_i e_i)^2 - sum_i e_i^2)`` (bi-interaction pooling, width ``d``, optional
dropout ``bi_dropout``); ``logit = b + linear(ids, dense) + dnn([f_BI, dense]) w_out`` with the DNN (128, 128). The
first-order ``linear`` part is an un-factorized width-1 table (never MLET) plus dense weights, as in DeepCTR-Torch and
the authors' code.

References:
    He and Chua, "Neural Factorization Machines for Sparse Predictive Analytics", arXiv:1708.05027.
    Deng et al., MLET, arXiv:2309.15881.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mlet_jax.embeddings import Features
from mlet_jax.models._deepctr import DeepCTRModel
from mlet_jax.models.layers import bi_interaction, deep_input, head


class NFM(DeepCTRModel):
    """NFM: ``(dense [B, num_dense], ids [B, S]) -> logits [B]``. ``bi_dropout``: dropout on ``f_BI`` (default 0)."""

    dnn: tuple[int, ...] = (128, 128)
    bi_dropout: float = 0.0

    @nn.compact
    def body(self, features: Features, dense_BxM: jax.Array, *, train: bool = False) -> jax.Array:
        if not self.dnn:
            raise ValueError("NFM needs at least one DNN layer")
        emb_BxFxD = features.emb_BxFxD
        bi_BxD = bi_interaction(emb_BxFxD)
        if self.bi_dropout and train:
            bi_BxD = nn.Dropout(self.bi_dropout, deterministic=False)(bi_BxD)
        deep_BxO = self.deep(deep_input(bi_BxD[:, None, :], dense_BxM), train)
        return self.first_order(features) + head(deep_BxO, "dnn_linear", self.param_dtype)
