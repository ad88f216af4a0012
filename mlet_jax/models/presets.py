"""The MLET paper's settings for each model (Section 3 and Appendix A.3 of arXiv:2309.15881).

* DLRM: SGD lr 0.2, projection init std 0.25; the six DeepCTR-Torch models: Adagrad lr 0.02, projection std 0.5.
* Batch 256, one epoch.
* Embedding tables U(+-1/sqrt(n_field)) for single-layer and MLET alike (the authors replaced DeepCTR's N(0, 1e-4)),
  and no L2 on the embeddings (DeepCTR's default is 1e-5).
"""

from __future__ import annotations

import dataclasses

from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.optim import OptimizerSpec


def paper_embedding(model: str, kind: str = "single", dim: int = 16, inner_dim: int | None = None,
                    **overrides) -> EmbeddingSpec:
    """The paper's embedding spec for ``model``: uniform tables, projection std 0.25 (DLRM) or 0.5 (others)."""
    spec = EmbeddingSpec(kind=kind, dim=dim, inner_dim=inner_dim, table_init="uniform",
                         projection_init="normal", projection_std=0.25 if model == "dlrm" else 0.5)
    return dataclasses.replace(spec, **overrides)


def paper_optimizer(model: str) -> OptimizerSpec:
    """SGD lr 0.2 for DLRM, Adagrad lr 0.02 for the DeepCTR-Torch models."""
    return OptimizerSpec("sgd", lr=0.2) if model == "dlrm" else OptimizerSpec("adagrad", lr=0.02)


def paper_loss_reduction(model: str) -> str:
    """``"mean"`` for DLRM (its reference averages the loss), ``"sum"`` for the DeepCTR-Torch models
    (``loss_reduction="sum"``)."""
    return "mean" if model == "dlrm" else "sum"


def paper_table_optimizer(model: str, embedding_l2: float = 0.0) -> OptimizerSpec | None:
    """The tables' optimizer when it differs from :func:`paper_optimizer`, else ``None``.

    DeepCTR-Torch adds ``l2 * ||W||^2`` for every table; ``embedding_l2`` reproduces that term as the table
    optimizer's ``weight_decay = 2 * l2`` (the paper: 0, which keeps the exact row-sparse table updates available).
    :meth:`mlet_jax.training.TrainConfig.paper` puts these specs together.
    """
    return dataclasses.replace(paper_optimizer(model), weight_decay=2.0 * embedding_l2) if embedding_l2 else None
