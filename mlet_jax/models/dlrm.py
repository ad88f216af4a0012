"""DLRM (Naumov et al., 2019) with single-layer or MLET embeddings.

``x = bottom_mlp(dense)`` (ending in ``d``, ReLU on every layer as in the reference);
``T = [x, e_1, ..., e_F]`` (``F + 1`` vectors of size ``d``); ``z = {<T_i, T_j>: i < j}``;
``logit = top_mlp([x, z])`` with hidden layers 512 -> 256 and a linear output.

The paper's bottom MLPs: Criteo 512 -> 256 -> 128 -> d, Avazu 256 -> 128 -> d; the top MLP is 512 -> 256 -> 1 on
both. Initialization follows the DLRM reference: dense weights N(0, sqrt(2 / (fan_in + fan_out))), biases
N(0, sqrt(1 / fan_out)), tables U(+-1/sqrt(n_field)). With no dense features the bottom MLP is dropped and only the
embeddings interact.

References:
    Naumov et al., "Deep Learning Recommendation Model for Personalization and Recommendation Systems",
    arXiv:1906.00091. Deng et al., MLET, arXiv:2309.15881.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlet_jax.embeddings import Features
from mlet_jax.models.base import CTRModel
from mlet_jax.models.layers import MLP, dot_interaction

CRITEO_BOTTOM = (512, 256, 128)


class DLRM(CTRModel):
    """DLRM: ``(dense [B, num_dense], ids [B, S]) -> logits [B]``."""

    bottom_mlp: tuple[int, ...] = CRITEO_BOTTOM
    top_mlp: tuple[int, ...] = (512, 256)
    interaction_vjp: bool = True   # the interaction's hand-written VJP; False: plain autodiff (forward mode works)

    @nn.compact
    def body(self, features: Features, dense_BxM: jax.Array, *, train: bool = False) -> jax.Array:
        emb_BxFxD = features.emb_BxFxD
        vecs = emb_BxFxD
        parts = []
        if self.num_dense:
            x_BxD = MLP((*self.bottom_mlp, self.embedding.dim), weight_init="dlrm", param_dtype=self.param_dtype,
                        name="bottom_mlp")(dense_BxM.astype(self.param_dtype))
            vecs = jnp.concatenate([x_BxD[:, None, :], emb_BxFxD], axis=1)
            parts.append(x_BxD)
        parts.append(dot_interaction(vecs, custom_vjp=self.interaction_vjp))
        top = MLP((*self.top_mlp, 1), activate_last=False, weight_init="dlrm", param_dtype=self.param_dtype,
                  name="top_mlp")(jnp.concatenate(parts, axis=1))
        return top[:, 0]
