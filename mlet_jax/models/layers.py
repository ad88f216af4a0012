"""Blocks shared by the CTR models.

Each block documents its equation; tests compare each with a direct numpy transcription.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def dlrm_dense_init(key, shape, dtype=jnp.float32):
    """DLRM reference weight init: N(0, sqrt(2 / (fan_in + fan_out)))."""
    fan_in, fan_out = shape
    return np.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, dtype)


def dlrm_bias_init(fan_in: int):
    """DLRM reference bias init: N(0, sqrt(1 / fan_out)) (the reference uses the layer's output size)."""

    def init(key, shape, dtype=jnp.float32):
        return np.sqrt(1.0 / shape[0]) * jax.random.normal(key, shape, dtype)

    return init


class MLP(nn.Module):
    """``x -> act(x W_1 + b_1) -> ... -> act(x W_L + b_L)``.

    Attributes:
        features: widths of the layers.
        activate_last: apply the activation after the last layer (DLRM's bottom MLP does; a logit head does not).
        init: ``"dlrm"`` (the DLRM reference: weights N(0, sqrt(2 / (fan_in + fan_out))), biases
            N(0, sqrt(1 / fan_out))), ``"torch"`` (``nn.Linear``'s default U(+-1/sqrt(fan_in)) for both) or
            ``"normal"`` (DeepCTR-Torch's DNN: weights N(0, 1e-4), torch default biases).
        dropout: dropout rate between layers (0 disables it).
    """

    features: Sequence[int]
    activate_last: bool = True
    init: str = "torch"
    dropout: float = 0.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        for i, width in enumerate(self.features):
            if self.init == "dlrm":
                kinit, binit = dlrm_dense_init, dlrm_bias_init(x.shape[-1])
            elif self.init == "normal":  # DeepCTR-Torch DNN: weights N(0, 1e-4), torch default bias
                kinit = nn.initializers.normal(1e-4)
                binit = _torch_bias_init(x.shape[-1])
            else:
                kinit = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
                binit = _torch_bias_init(x.shape[-1])
            x = nn.Dense(width, kernel_init=kinit, bias_init=binit, param_dtype=self.param_dtype,
                         dtype=self.param_dtype)(x)
            if i < len(self.features) - 1 or self.activate_last:
                x = nn.relu(x)
                if self.dropout and train:
                    x = nn.Dropout(self.dropout, deterministic=False)(x)
        return x


def _torch_bias_init(fan_in: int):
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dot_interaction(t_BxNxD: jax.Array) -> jax.Array:
    """DLRM's dot interaction: the ``N (N - 1) / 2`` pairwise dot products ``<t_i, t_j>``, ``i < j``.

    ``Z = T T^T``; the strictly upper triangle in row-major order (the DLRM reference takes the strictly lower
    triangle of the same symmetric matrix).
    """
    n = t_BxNxD.shape[1]
    z_BxNxN = jnp.einsum("bnd,bmd->bnm", t_BxNxD, t_BxNxD)
    iu, ju = np.triu_indices(n, k=1)
    return z_BxNxN[:, iu, ju]
