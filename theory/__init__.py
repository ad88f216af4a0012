"""Numerical verification of the MLET update theorem, in the paper's notation.

``W = W1 W2`` with ``W1`` (d x k) and ``W2`` (k x n); ``G = dL/dW`` (d x n); ``W1 = U S1 X^T``, ``W2 = Y S2 V^T``.
Run ``python -m theory`` for the report. :mod:`mlet_jax` never imports this package.

References:
    Deng et al., "Enhancing cross-category learning in recommendation systems with multi-layer embedding
    training" (MLET), arXiv:2309.15881.
"""

from theory.enhancement import MeasuredEnhancement, measured_enhancement
from theory.params import from_params
from theory.spectral import (
    DENSE_MAX_N,
    SVDFactors,
    count_nonzero_enhancement_factors,
    enhancement_factors,
    measured_nonzero_enhancement_factors,
    svd_factors,
)
from theory.updates import (
    first_order_update,
    second_order_term,
    single_layer_sgd_step,
    spectral_update,
    two_layer_sgd_step,
)

__all__ = [
    "DENSE_MAX_N",
    "MeasuredEnhancement",
    "SVDFactors",
    "count_nonzero_enhancement_factors",
    "enhancement_factors",
    "first_order_update",
    "from_params",
    "measured_enhancement",
    "measured_nonzero_enhancement_factors",
    "second_order_term",
    "single_layer_sgd_step",
    "spectral_update",
    "svd_factors",
    "two_layer_sgd_step",
]
