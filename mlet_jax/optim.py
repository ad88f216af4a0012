"""Optimizers with PyTorch's exact semantics, per-parameter groups, and row-sparse table updates.

The paper trains DLRM with ``torch.optim.SGD(lr=0.2)`` and the other models with ``torch.optim.Adagrad(lr=0.02)``.
``optax.adagrad`` differs from torch (accumulator starts at 0.1, eps 1e-7 inside the square root), so the torch
rules are written here as optax ``GradientTransformation``s:

* SGD (``torch.optim.SGD``): ``g <- g + wd * p``; with momentum ``b <- g`` on the first step, else
  ``b <- mu * b + (1 - dampening) * g``; ``g <- g + mu * b`` (Nesterov) or ``g <- b``; ``p <- p - lr * g``.
* Adagrad (``torch.optim.Adagrad``): ``t <- t + 1``; ``clr = lr / (1 + (t - 1) * lr_decay)``;
  ``g <- g + wd * p``; ``s <- s + g^2`` (``s`` starts at ``initial_accumulator_value``);
  ``p <- p - clr * g / (sqrt(s) + eps)`` with ``eps = 1e-10`` outside the square root.

Row-sparse updates (:class:`mlet_jax.row_sparse.RowSparse`) apply the same rules to only the rows a batch touched;
for SGD without momentum and Adagrad, with ``weight_decay = 0``, they equal the dense update exactly, because a row
whose gradient is zero does not move and its accumulator does not change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "adagrad")


class TorchSGDState(NamedTuple):
    count: chex.Array
    momentum: Any


def torch_sgd(lr: float, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
              nesterov: bool = False) -> optax.GradientTransformation:
    """``torch.optim.SGD`` as an optax transformation (updates are to be added to the parameters)."""
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def init_fn(params):
        mom = jax.tree_util.tree_map(jnp.zeros_like, params) if momentum else None
        return TorchSGDState(count=jnp.zeros([], jnp.int32), momentum=mom)

    def update_fn(updates, state, params=None):
        if weight_decay:
            if params is None:
                raise ValueError("torch_sgd with weight_decay needs params")
            updates = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, updates, params)
        mom = state.momentum
        if momentum:
            first = state.count == 0
            mom = jax.tree_util.tree_map(
                lambda b, g: jnp.where(first, g, momentum * b + (1 - dampening) * g), mom, updates)
            if nesterov:
                updates = jax.tree_util.tree_map(lambda g, b: g + momentum * b, updates, mom)
            else:
                updates = mom
        updates = jax.tree_util.tree_map(lambda g: -lr * g, updates)
        return updates, TorchSGDState(count=state.count + 1, momentum=mom)

    return optax.GradientTransformation(init_fn, update_fn)


def _decayed_lr(lr: float, lr_decay: float, count, dtype):
    """torch's ``lr / (1 + (t - 1) * lr_decay)`` in the parameter's dtype (a float64 run keeps a float64 lr)."""
    if not lr_decay:
        return lr
    return lr / (1 + (count - 1).astype(dtype) * lr_decay)


class TorchAdagradState(NamedTuple):
    count: chex.Array
    sum: Any


def torch_adagrad(lr: float, lr_decay: float = 0.0, weight_decay: float = 0.0,
                  initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> optax.GradientTransformation:
    """``torch.optim.Adagrad`` as an optax transformation (updates are to be added to the parameters)."""

    def init_fn(params):
        acc = jax.tree_util.tree_map(lambda p: jnp.full_like(p, initial_accumulator_value), params)
        return TorchAdagradState(count=jnp.zeros([], jnp.int32), sum=acc)

    def update_fn(updates, state, params=None):
        count = state.count + 1
        if weight_decay:
            if params is None:
                raise ValueError("torch_adagrad with weight_decay needs params")
            updates = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, updates, params)
        acc = jax.tree_util.tree_map(lambda s, g: s + g * g, state.sum, updates)
        updates = jax.tree_util.tree_map(
            lambda g, s: (-_decayed_lr(lr, lr_decay, count, g.dtype) * (g / (jnp.sqrt(s) + eps))).astype(g.dtype),
            updates, acc)
        return updates, TorchAdagradState(count=count, sum=acc)

    return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A torch optimizer by name and hyper-parameters (hashable, so it can key compiled steps)."""

    name: str = "adagrad"
    lr: float = 0.02
    weight_decay: float = 0.0
    lr_decay: float = 0.0
    momentum: float = 0.0
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be finite and > 0, got {self.lr}")
        for name in ("weight_decay", "lr_decay", "momentum", "initial_accumulator_value"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be finite and > 0, got {self.eps}")
        if self.name == "sgd" and (self.lr_decay or self.initial_accumulator_value):
            raise ValueError("lr_decay and initial_accumulator_value are Adagrad options")
        if self.name == "adagrad" and self.momentum:
            raise ValueError("momentum is an SGD option")

    def transform(self) -> optax.GradientTransformation:
        if self.name == "sgd":
            return torch_sgd(self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch_adagrad(self.lr, lr_decay=self.lr_decay, weight_decay=self.weight_decay,
                             initial_accumulator_value=self.initial_accumulator_value, eps=self.eps)

    def scaled(self, factor: float) -> OptimizerSpec:
        """The same optimizer with its learning rate multiplied (the embedding-lr control of MLET claims)."""
        return dataclasses.replace(self, lr=self.lr * factor)

    @property
    def supports_row_sparse(self) -> bool:
        """Whether a row-sparse update equals the dense one exactly: no momentum, and no weight decay except SGD's,
        whose decay of untouched rows has a closed form (:class:`mlet_jax.row_sparse.RowSparse` applies it lazily)."""
        return self.momentum == 0 and (self.weight_decay == 0 or self.name == "sgd")


def is_table_path(path) -> bool:
    """True for parameter leaves named ``table`` (embedding tables indexed by the batch's row ids)."""
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) == "table"


def label_tables(params) -> Any:
    """``"table"`` for embedding tables, ``"dense"`` for everything else (labels for :func:`partitioned`)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: "table" if is_table_path(p) else "dense", params)


def partitioned(groups: dict[str, optax.GradientTransformation],
                label_fn: Callable[[Any], Any] = label_tables) -> optax.GradientTransformation:
    """Per-parameter-group optimizer (``optax.partition``) that insists every label has a transformation."""

    def checked_labels(params):
        labels = label_fn(params)
        missing = set(jax.tree_util.tree_leaves(labels)) - set(groups)
        if missing:
            raise ValueError(f"parameters labelled {sorted(missing)} have no optimizer; groups: {sorted(groups)}")
        return labels

    return optax.partition(groups, checked_labels)

