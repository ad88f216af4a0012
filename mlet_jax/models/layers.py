"""Blocks shared by the CTR models.

Each block documents its equation; tests compare each with a direct numpy transcription.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlet_jax.embeddings import FirstOrder


def dlrm_dense_init(key, shape, dtype=jnp.float32):
    """DLRM reference weight init: N(0, sqrt(2 / (fan_in + fan_out)))."""
    fan_in, fan_out = shape
    return np.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, dtype)


def dlrm_bias_init(key, shape, dtype=jnp.float32):
    """DLRM reference bias init: N(0, sqrt(1 / fan_out)) (the reference uses the layer's output size)."""
    return np.sqrt(1.0 / shape[0]) * jax.random.normal(key, shape, dtype)


class MLP(nn.Module):
    """``x -> act(x W_1 + b_1) -> ... -> act(x W_L + b_L)``.

    Attributes:
        features: widths of the layers.
        activate_last: apply the activation after the last layer (DLRM's bottom MLP does; a logit head does not).
        weight_init: ``"dlrm"`` (the DLRM reference: weights N(0, sqrt(2 / (fan_in + fan_out))), biases
            N(0, sqrt(1 / fan_out))), ``"torch"`` (``nn.Linear``'s default U(+-1/sqrt(fan_in)) for both) or
            ``"normal"`` (DeepCTR-Torch's DNN: weights N(0, 1e-4), torch default biases).
        dropout: dropout rate between layers (0 disables it).
    """

    features: Sequence[int]
    activate_last: bool = True
    weight_init: str = "torch"  # not "init": a field of that name would shadow Module.init
    dropout: float = 0.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.weight_init not in ("dlrm", "torch", "normal"):
            raise ValueError(f"MLP weight_init must be 'dlrm', 'torch' or 'normal', got {self.weight_init!r}")
        for i, width in enumerate(self.features):
            if self.weight_init == "dlrm":
                kinit, binit = dlrm_dense_init, dlrm_bias_init
            elif self.weight_init == "normal":  # DeepCTR-Torch DNN: weights N(0, 1e-4), torch default bias
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


def dot_interaction(t_BxVxD: jax.Array, *, custom_vjp: bool = True) -> jax.Array:
    """DLRM's dot interaction: the ``N (N - 1) / 2`` pairwise dot products ``<t_i, t_j>``, ``i < j``.

    ``Z = T T^T``; the strictly upper triangle in row-major order (the DLRM reference takes the strictly lower
    triangle of the same symmetric matrix). The gradient is one batched product ``dT = G T``, where ``G`` is the
    symmetric ``N x N`` matrix holding the cotangent of pair ``(i, j)`` at ``[i, j]`` and ``[j, i]`` (zero diagonal).
    ``G`` is read from the cotangent with a constant gather. Autodiff of the gather and the einsum instead
    scatter-adds into ``Z`` and runs two batched products, 1.7-1.9x the time on CPU (BENCHMARKS.md, "DLRM's dot
    interaction").

    A ``jax.custom_vjp`` function has no forward mode: ``custom_vjp=False`` computes the same values with plain
    autodiff of the einsum and the gather, for ``jax.jvp``, ``jax.jacfwd`` or Hessian-vector products.
    """
    if not custom_vjp:
        return _upper_pairs(t_BxVxD)
    return _dot_interaction(t_BxVxD.shape[1])(t_BxVxD)


def _upper_pairs(t_BxVxD: jax.Array) -> jax.Array:
    iu, ju = np.triu_indices(t_BxVxD.shape[1], k=1)
    return jnp.einsum("bnd,bmd->bnm", t_BxVxD, t_BxVxD)[:, iu, ju]


@functools.cache
def _dot_interaction(n: int):
    """:func:`_upper_pairs` for ``N = n`` with the backward ``G T``."""
    iu, ju = np.triu_indices(n, k=1)
    sym = np.full((n, n), iu.size)                        # index iu.size: an appended zero (the diagonal)
    sym[iu, ju] = sym[ju, iu] = np.arange(iu.size)
    sym = sym.reshape(-1).astype(np.int32)
    f = jax.custom_vjp(_upper_pairs)

    def bwd(t_BxVxD, g_BxP):
        g_BxP1 = jnp.concatenate([g_BxP, jnp.zeros_like(g_BxP[:, :1])], axis=1)
        g_BxVxV = g_BxP1[:, sym].reshape(g_BxP.shape[0], n, n)
        return (jnp.einsum("bnm,bmd->bnd", g_BxVxV, t_BxVxD).astype(t_BxVxD.dtype),)

    f.defvjp(lambda t_BxVxD: (f(t_BxVxD), t_BxVxD), bwd)
    return f


# -- DeepCTR-Torch blocks ----------------------------------------------------------------------------------------
# Initializers follow DeepCTR-Torch 0.2.x: DNN weights N(0, 1e-4) (MLP weight_init="normal"), output heads torch default
# U(+-1/sqrt(fan_in)) without bias, cross kernels Glorot normal with zero biases, CIN 1x1 convolutions torch default,
# attention matrices N(0, 0.05), first-order weights N(0, 1e-4), one zero-initialized output bias.

torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""``torch.nn.Linear``'s default weight init, U(+-1/sqrt(fan_in)), for Flax ``[fan_in, fan_out]`` kernels."""


def head(x_BxO: jax.Array, name: str, param_dtype: Any = jnp.float32) -> jax.Array:
    """DeepCTR's bias-free logit head ``nn.Linear(H, 1, bias=False)``: ``[B, H] -> [B]``."""
    return nn.Dense(1, use_bias=False, kernel_init=torch_linear_init, param_dtype=param_dtype, dtype=param_dtype,
                    name=name)(x_BxO)[:, 0]


def deep_input(emb_BxFxD: jax.Array, dense_BxM: jax.Array) -> jax.Array:
    """DeepCTR's ``combined_dnn_input``: ``[flatten(emb), dense]`` of width ``F d + num_dense``."""
    flat = emb_BxFxD.reshape(emb_BxFxD.shape[0], -1)
    return jnp.concatenate([flat, dense_BxM.astype(flat.dtype)], axis=1) if dense_BxM.shape[1] else flat


def fm_interaction(v_BxFxD: jax.Array) -> jax.Array:
    """Factorization-machine second-order term ``sum_{i<j} <v_i, v_j>``: ``[B, F, D] -> [B]``.

    Computed with Rendle's identity ``0.5 * sum_d ((sum_i v_id)^2 - sum_i v_id^2)`` in ``O(F D)``.

    References:
        Rendle, "Factorization Machines", ICDM 2010.
    """
    return 0.5 * jnp.sum(jnp.square(v_BxFxD.sum(axis=1)) - jnp.square(v_BxFxD).sum(axis=1), axis=1)


def bi_interaction(v_BxFxD: jax.Array) -> jax.Array:
    """NFM's bi-interaction pooling ``sum_{i<j} v_i * v_j`` (element-wise): ``[B, F, D] -> [B, D]``.

    ``0.5 * ((sum_i v_i)^2 - sum_i v_i^2)``, the FM term before its sum over ``d``.

    References:
        He and Chua, "Neural Factorization Machines for Sparse Predictive Analytics", arXiv:1708.05027.
    """
    return 0.5 * (jnp.square(v_BxFxD.sum(axis=1)) - jnp.square(v_BxFxD).sum(axis=1))


class CrossNet(nn.Module):
    """DCN's cross network, vector parameterization: ``x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l``, ``[B, N] -> [B, N]``.

    Attributes:
        num_layers: cross layers ``L`` (DeepCTR's ``cross_num``, default 2).

    Parameters ``kernel_l`` (``[N]``, Glorot normal on an ``[N, 1]`` matrix, std ``sqrt(2 / (N + 1))``) and ``bias_l``
    (``[N]``, zeros), as DeepCTR-Torch's ``CrossNet``.

    References:
        Wang et al., "Deep & Cross Network for Ad Click Predictions", arXiv:1708.05123.
    """

    num_layers: int = 2
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x0_BxI: jax.Array) -> jax.Array:
        n = x0_BxI.shape[-1]
        std = np.sqrt(2.0 / (n + 1))
        x_BxI = x0_BxI
        for i in range(self.num_layers):
            w_I = self.param(f"kernel_{i}", nn.initializers.normal(std), (n,), self.param_dtype)
            b_I = self.param(f"bias_{i}", nn.initializers.zeros, (n,), self.param_dtype)
            x_BxI = x0_BxI * (x_BxI @ w_I)[:, None] + b_I[None, :] + x_BxI
        return x_BxI


class CIN(nn.Module):
    """xDeepFM's compressed interaction network: ``[B, F, D] -> [B, featuremaps]``.

    ``X^0 = emb``; layer ``k`` forms ``Z^k[b, h, m, d] = X^{k-1}[b, h, d] X^0[b, m, d]`` and compresses it with a
    1 x 1 convolution over the ``(h, m)`` channels:
    ``X^k[b, c, d] = relu(sum_{h,m} W^k[h m, c] Z^k[b, h, m, d] + b^k_c)``.
    With ``split_half`` every layer but the last sends half its maps on (``X^k`` keeps the first half) and half to the
    output; the output is ``sum_d`` of the directly connected maps, ``sum(sizes[:-1]) / 2 + sizes[-1]`` of them.

    Attributes:
        layer_sizes: feature maps per layer (DeepCTR default (256, 128)).
        split_half: as above (every size but the last must be even).

    References:
        Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for Recommender Systems",
        arXiv:1803.05170.
    """

    layer_sizes: Sequence[int] = (256, 128)
    split_half: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x0_BxFxD: jax.Array) -> jax.Array:
        b, f, d = x0_BxFxD.shape
        # Work in [B, D, maps] layout, so each layer's compression is one [B D, H F] x [H F, C] matrix product.
        x0_BxDxF = jnp.swapaxes(x0_BxFxD, 1, 2)
        x_BxDxP, outs = x0_BxDxF, []
        for i, size in enumerate(self.layer_sizes):
            last = i == len(self.layer_sizes) - 1
            if self.split_half and not last and size % 2:
                raise ValueError(f"CIN layer sizes must be even except the last with split_half, got {size}")
            fan_in = x_BxDxP.shape[2] * f
            bound = 1.0 / np.sqrt(fan_in)  # torch Conv1d default: U(+-1/sqrt(in_channels * kernel_size))
            uni = lambda key, shape, dtype, bound=bound: jax.random.uniform(key, shape, dtype, -bound, bound)
            w_PFxQ = self.param(f"kernel_{i}", uni, (fan_in, size), self.param_dtype)
            b_Q = self.param(f"bias_{i}", uni, (size,), self.param_dtype)
            z_BxDxPF = (x_BxDxP[:, :, :, None] * x0_BxDxF[:, :, None, :]).reshape(b, d, fan_in)
            h_BxDxQ = nn.relu(z_BxDxPF @ w_PFxQ + b_Q[None, None, :])
            if self.split_half and not last:
                x_BxDxP, direct = h_BxDxQ[:, :, : size // 2], h_BxDxQ[:, :, size // 2:]
            else:
                x_BxDxP, direct = h_BxDxQ, h_BxDxQ
            outs.append(direct.sum(axis=1))
        return jnp.concatenate(outs, axis=1)


class InteractingLayer(nn.Module):
    """AutoInt's interacting layer: multi-head self-attention over fields with a residual, ``[B, F, D] -> [B, F, A H]``.

    Per head ``h``: ``Q = E W_Q^h``, ``K = E W_K^h``, ``V = E W_V^h`` (``[F, A]`` each), ``alpha = softmax_j(Q K^T)``
    (unscaled, over the keys), ``out^h = alpha V``; ``out = relu([out^1, ..., out^H] + E W_res)``. Weights
    ``N(0, 0.05)`` as in DeepCTR-Torch.

    Attributes:
        att_embedding_size: ``A``, the attention width per head (DeepCTR default 8).
        head_num: ``H`` (default 2).
        use_res: add the ``E W_res`` residual (default True).

    References:
        Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural Networks",
        arXiv:1810.11921.
    """

    att_embedding_size: int = 8
    head_num: int = 2
    use_res: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, e_BxFxD: jax.Array) -> jax.Array:
        b, f, d = e_BxFxD.shape
        a, h = self.att_embedding_size, self.head_num
        init = nn.initializers.normal(0.05)
        w = {n: self.param(n, init, (d, a * h), self.param_dtype) for n in ("query", "key", "value")}
        q_BxFxHxA, k_BxFxHxA, v_BxFxHxA = (
            jnp.einsum("bfd,de->bfe", e_BxFxD, w[n]).reshape(b, f, h, a) for n in ("query", "key", "value"))
        scores_BxHxFxF = jnp.einsum("bihk,bjhk->bhij", q_BxFxHxA, k_BxFxHxA)
        alpha_BxHxFxF = jax.nn.softmax(scores_BxHxFxF, axis=-1)
        out_BxFxE = jnp.einsum("bhij,bjhk->bihk", alpha_BxHxFxF, v_BxFxHxA).reshape(b, f, h * a)
        if self.use_res:
            w_res = self.param("res", init, (d, a * h), self.param_dtype)
            out_BxFxE = out_BxFxE + jnp.einsum("bfd,de->bfe", e_BxFxD, w_res)
        return nn.relu(out_BxFxE)


# The first-order (wide) part belongs to the embedding stage, which owns every table; kept here under its old name.
Linear = FirstOrder
