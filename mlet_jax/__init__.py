"""mlet_jax: multi-layer embedding training (MLET) for CTR models in JAX/Flax.

The short public surface (the README's example)::

    from mlet_jax import EmbeddingSpec, OptimizerSpec, TrainConfig, Trainer, build_model, fit, make_synthetic

Everything else lives in its module: :mod:`mlet_jax.data`, :mod:`mlet_jax.embeddings`, :mod:`mlet_jax.models`,
:mod:`mlet_jax.optim`, :mod:`mlet_jax.row_sparse`, :mod:`mlet_jax.training`, :mod:`mlet_jax.distributed`,
:mod:`mlet_jax.checkpoint`, :mod:`mlet_jax.metrics`, :mod:`mlet_jax.compression`, :mod:`mlet_jax.runtime`
(glibc malloc settings the command line applies for fast CPU steps).

Layers (``tests/test_layering.py`` checks them from the import graph): ``data`` <- ``embeddings``, ``optim``,
``models`` <- ``row_sparse``, ``checkpoint``, ``distributed``, ``training`` <- the command line and the demo.
``mlet_jax`` never imports ``theory``, ``experiments`` or ``benchmarks``.

Shape legend
------------
Array names end in their shape, one letter per axis, joined by ``x`` (``emb_BxFxD``); each letter has one meaning
everywhere in the code:

=====  =================================================================================================
``B``  samples: a batch, or the rows of a split
``F``  categorical fields
``S``  id slots of a sample (``F`` without bag fields; a bag field has several)
``D``  embedding dimension ``d``
``K``  MLET inner dimension ``k`` (the wide table's width)
``W``  a table's width: ``D``, ``K``, or 1 for first-order tables
``M``  dense (numerical) features
``N``  table rows (all fields of a kind fused into one table)
``U``  a batch's rows after dedup: one entry per id slot (``B * S``), repeats pointing at one representative
``C``  the rows a compacted batch holds (its capacity), which is also the row-sparse update's chunk
``G``  the rows a row-sparse step gathers (``U`` or ``C``)
``T``  tiles of equally many gathered rows, each of one field
``R``  rows of one table-initialization chunk
``I``  the input width of an MLP or cross network (``F * D + M``)
``O``  the output width of an MLP's last layer
``V``  the vectors of a pairwise interaction (``F``, or ``F + 1`` with DLRM's dense vector)
``H``  attention heads;  ``A``: an attention head's size;  ``E``: ``H * A``
``P``  CIN feature maps of the previous layer;  ``Q``: of the current layer (xDeepFM)
``L``  layers
=====  =================================================================================================
"""

import importlib

# Loaded on first use rather than here: `import mlet_jax.serving` (and with it this package) must work without
# flax, and `python -m mlet_jax.data` should not pay for importing jax's model stack.
_EXPORTS = {
    "batches": "mlet_jax.data",
    "load_dataset": "mlet_jax.data",
    "make_synthetic": "mlet_jax.data",
    "EmbeddingSpec": "mlet_jax.embeddings",
    "MODELS": "mlet_jax.models",
    "build_model": "mlet_jax.models",
    "collapse_model": "mlet_jax.models",
    "OptimizerSpec": "mlet_jax.optim",
    "TrainConfig": "mlet_jax.training",
    "TrainState": "mlet_jax.training",
    "Trainer": "mlet_jax.training",
    "fit": "mlet_jax.training",
    "make_mesh": "mlet_jax.distributed",
    "binary_metrics": "mlet_jax.metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlet_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
