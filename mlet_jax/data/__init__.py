"""Datasets: arrays plus a schema, from the synthetic generator or real files."""

from mlet_jax.data.base import PAD_ID, Dataset, Schema, Split, batches, count_ids, epoch_order

__all__ = ["PAD_ID", "Dataset", "Schema", "Split", "batches", "count_ids", "epoch_order"]
