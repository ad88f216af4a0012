"""Datasets: arrays plus a schema, from the synthetic generator or real files."""

from mlet_jax.data.base import PAD_ID, Dataset, Schema, Split, batches, count_ids, epoch_order
from mlet_jax.data.errors import DataFormatError
from mlet_jax.data.registry import load_dataset, prepare
from mlet_jax.data.synthetic import make_synthetic

__all__ = ["PAD_ID", "Dataset", "Schema", "Split", "batches", "count_ids", "epoch_order",
           "DataFormatError", "load_dataset", "make_synthetic", "prepare"]
