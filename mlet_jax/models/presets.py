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

BATCH_SIZE = 256
EPOCHS = 1


def paper_embedding(model: str, kind: str = "single", dim: int = 16, inner_dim: int | None = None,
                    **overrides) -> EmbeddingSpec:
    """The paper's embedding spec for ``model``: uniform tables, projection std 0.25 (DLRM) or 0.5 (others)."""
    spec = EmbeddingSpec(kind=kind, dim=dim, inner_dim=inner_dim, table_init="uniform",
                         projection_init="normal", projection_std=0.25 if model == "dlrm" else 0.5)
    return dataclasses.replace(spec, **overrides)


def paper_optimizer(model: str) -> OptimizerSpec:
    """SGD lr 0.2 for DLRM, Adagrad lr 0.02 for the DeepCTR-Torch models."""
    return OptimizerSpec("sgd", lr=0.2) if model == "dlrm" else OptimizerSpec("adagrad", lr=0.02)


def paper_train_config(model: str, embedding_l2: float = 0.0):
    """A :class:`mlet_jax.training.TrainConfig` with the paper's optimizer.

    DeepCTR-Torch sums the loss over the batch (``loss_reduction="sum"``) and adds ``l2 * ||W||^2`` for every table;
    ``embedding_l2`` reproduces that term as the table optimizer's ``weight_decay = 2 * l2`` (the paper: 0, which
    also keeps the exact row-sparse table updates available). DLRM averages the loss, as its reference does.
    """
    from mlet_jax.training import TrainConfig  # models do not otherwise depend on the training loop

    opt = paper_optimizer(model)
    tables = dataclasses.replace(opt, weight_decay=2.0 * embedding_l2) if embedding_l2 else None
    return TrainConfig(optimizer=opt, table_optimizer=tables, sparse_tables=False if embedding_l2 else None,
                       loss_reduction="mean" if model == "dlrm" else "sum")
