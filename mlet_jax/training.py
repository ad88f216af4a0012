"""Train state, one pure jitted train step, evaluation, and the ``fit`` loop.

``Trainer(model, config, mesh=None)`` builds pure functions of ``(state, batch)``:

* ``train_step(state, batch) -> (state, metrics)``: binary cross-entropy on logits, one optimizer step. One
  module-level ``jax.jit`` with the trainer as a static argument and the state donated, so equal trainers share one
  compiled step through JAX's own cache.
* ``eval_step(params, batch) -> logits``: jitted the same way.

The same step runs on one device and on a mesh (:mod:`mlet_jax.distributed`): with ``mesh``, the state is created
and kept with shardings chosen by its structure (the stage's tables, their row-sparse optimizer state and the dedup
scratch split by rows over every device; everything else replicated) and the batch is split over the ``data`` axis.
Tables are padded to a multiple of the device count (padding rows are never indexed).

Two update paths give the same numbers (tests check 20 steps against each other):

* dense: ``jax.grad`` over every parameter and one ``optax.partition`` optimizer (tables and the rest may use
  different torch optimizers);
* row-sparse (default whenever it is exact: SGD without momentum or Adagrad, no weight decay on tables,
  :mod:`mlet_jax.row_sparse`): the batch's rows of each table are gathered once, the model body runs on the
  features computed from them, and only those rows and their Adagrad accumulators are updated. Cost grows with the
  batch, not with the table. MLET projections and MLPs stay dense parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from mlet_jax import distributed, row_sparse
from mlet_jax import metrics as metrics_lib
from mlet_jax.checkpoint import Checkpointer, CheckpointWarning
from mlet_jax.data.base import Split, batches, epoch_order, take_rows
from mlet_jax.models import presets
from mlet_jax.optim import OptimizerSpec, partitioned
from mlet_jax.row_sparse import RowSparse
from mlet_jax.runlog import RunLog, check_target, start_record
from mlet_jax.spectra import SpectraCallback

# TrainConfig.chunk_samples by default: the per-sample part of a step runs 1024 samples at a time. DLRM's MLPs at
# batch 4096 ran at ~55% of XLA CPU's large-matmul rate in one pass (BENCHMARKS.md, issue 19); in chunks of 1024
# their activations stay in cache.
CHUNK_SAMPLES = 1024
# TrainConfig.compact_headroom by default: the compact step's capacity is 1.05 times the first batch's distinct rows.
# Batches vary little (200 batches of 1024, synthetic default and Criteo-shaped: tiles filled within 1-4% of the
# first batch's), and one that has more spills the rest into small chunks (row_sparse.spill_plan) at about the cost
# of its extra rows, so the capacity need not cover the worst batch.
COMPACT_HEADROOM = 1.05


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How parameters are updated.

    Attributes:
        optimizer: torch optimizer for the dense parameters (MLPs, MLET projections, ...), and for the tables
            unless ``table_optimizer`` is given. Paper: SGD lr 0.2 for DLRM, Adagrad lr 0.02 for the rest.
        table_optimizer: optimizer for the embedding stage's tables (embedding and first-order tables).
        sparse_tables: update only the batch's rows of each table; ``None``: row-sparse, which is exact for SGD
            without momentum (its weight decay applied lazily, :mod:`mlet_jax.row_sparse`) and Adagrad without
            weight decay; other table optimizers need an explicit ``False`` (dense table updates, every row every
            step).
        loss_reduction: ``"mean"`` over the batch (DLRM reference) or ``"sum"`` (DeepCTR-Torch).
        grad_norm: also return the global gradient norm in every step's metrics (``"grad_norm"``). Off by
            default: it is one more pass over every gradient, 5-7% of a DCN or DeepFM step with MLET tables.
            Without it ``fit`` checks the parameters themselves for NaN/inf before each checkpoint.
        chunk_samples: run the per-sample part of a step (the model body on the embeddings: interaction, MLPs,
            heads; and the loss) over chunks of this many samples, gradients summed
            (:func:`mlet_jax.row_sparse.lookup_body_value_and_grad` on the row-sparse path, with each chunk's
            occurrences looked up in the batch's projected rows; :func:`mlet_jax.row_sparse.body_value_and_grad` on
            the dense path): a chunk's activations stay in cache, a large batch's do not. The embedding part (dedup,
            compaction, gather, MLET projection, row updates) still runs once per batch. Same gradient as one
            pass up to float rounding, for any batch size (a batch not divisible into chunks runs its rest as one
            more, smaller chunk); dropout masks are drawn per chunk (seeded,
            deterministic, not the one-pass masks). ``None``: :data:`CHUNK_SAMPLES` on one device, one pass on a
            mesh; ``0``: one pass. A batch of at most this many samples always runs in one pass.
        compact_headroom: the row-sparse compact step (:mod:`mlet_jax.row_sparse`) holds this many times the
            distinct rows (in tiles) of the first batch the train step sees of each batch size, instead of a fixed
            :data:`mlet_jax.row_sparse.COMPACT_FRACTION` of the slots (never more than that): less padding gathered,
            projected and updated. Exact whatever it is: a batch with more distinct rows spills the rest into
            small chunks after the capacity (:func:`mlet_jax.row_sparse.spill_plan`, about the cost of those rows).
            ``0``: the fixed fraction. Without a mesh only (on a mesh: the fixed fraction).
    """

    optimizer: OptimizerSpec = OptimizerSpec()
    table_optimizer: OptimizerSpec | None = None
    sparse_tables: bool | None = None
    loss_reduction: str = "mean"
    grad_norm: bool = False
    chunk_samples: int | None = None
    compact_headroom: float = COMPACT_HEADROOM

    def __post_init__(self):
        if self.loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {self.loss_reduction!r}")
        if self.chunk_samples is not None and (isinstance(self.chunk_samples, bool)
                                               or not isinstance(self.chunk_samples, (int, np.integer))
                                               or self.chunk_samples < 0):
            raise ValueError(f"chunk_samples must be None, 0 (one pass) or a positive number of samples, got "
                             f"{self.chunk_samples!r}")
        if not (self.compact_headroom == 0 or self.compact_headroom >= 1):
            raise ValueError(f"compact_headroom must be 0 (the fixed fraction) or >= 1, got {self.compact_headroom!r}")
        if self.sparse_tables and not self.tables.supports_row_sparse:
            raise ValueError("sparse_tables=True needs a table optimizer without momentum, and without weight decay "
                             "unless it is SGD")
        if self.sparse_tables is None and not self.tables.supports_row_sparse:
            # never switch to the slow path without a word: dense table updates touch every row every step
            raise ValueError("the table optimizer has momentum or Adagrad weight decay, which row-sparse table "
                             "updates cannot apply exactly (SGD's weight decay they can); dense table updates touch "
                             "every row every step (326-478x slower per step on a 4.5M-row table): pass "
                             "sparse_tables=False (--sparse-tables off) to accept that cost")

    @classmethod
    def paper(cls, model: str, embedding_l2: float = 0.0) -> TrainConfig:
        """The paper's optimizer and loss reduction for ``model`` (:mod:`mlet_jax.models.presets`).

        ``embedding_l2 > 0`` reproduces DeepCTR-Torch's table L2 term as table weight decay: row-sparse with SGD
        (lazy decay), dense with Adagrad (its decay has no row-sparse form).
        """
        tables = presets.paper_table_optimizer(model, embedding_l2)
        return cls(optimizer=presets.paper_optimizer(model), table_optimizer=tables,
                   sparse_tables=None if tables is None or tables.supports_row_sparse else False,
                   loss_reduction=presets.paper_loss_reduction(model))

    @property
    def tables(self) -> OptimizerSpec:
        return self.table_optimizer or self.optimizer

    @property
    def sparse(self) -> bool:
        return self.tables.supports_row_sparse if self.sparse_tables is None else self.sparse_tables


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes.

    Attributes:
        step: steps taken.
        params: the model's parameters (full tables).
        opt_state: the dense optimizer's state: over the non-table parameters on the row-sparse path, over every
            parameter (one ``optax.partition``) on the dense path.
        table_opt_state: ``{table path "a/b/table": RowSparseState}`` on the row-sparse path, else ``None``.
        dedup: the row-sparse dedup scratch (int32, one entry per table row, :func:`mlet_jax.row_sparse.dedup_rows`),
            or ``None`` (dense path, or tables above ``SCATTER_DEDUP_MAX_ROWS`` rows: sort-based dedup).
        rng: the dropout key.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    table_opt_state: Any
    dedup: Any
    rng: jax.Array


def bce_with_logits(logits, labels, reduction: str = "mean"):
    losses = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
    return losses.mean() if reduction == "mean" else losses.sum()


def _sq_norm(tree) -> jax.Array:
    return sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)), jnp.zeros([]))


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(_sq_norm(tree))


def _name(path: tuple[str, ...]) -> str:
    return "/".join(path)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Pure, jitted training functions for one model and one update rule, on one device or a mesh.

    Attributes:
        model: a CTR model (:class:`mlet_jax.models.base.CTRModel`).
        config: the update rule.
        mesh: a ``(data, model)`` device mesh (:func:`mlet_jax.distributed.make_mesh`), or ``None`` for one device.
            With a mesh the model's tables are padded to a multiple of the device count (``self.model`` is then the
            padded clone; :func:`mlet_jax.models.collapse_model` and :func:`mlet_jax.models.strip_padding` drop the
            padding rows).
    """

    model: Any
    config: TrainConfig = TrainConfig()
    mesh: jax.sharding.Mesh | None = None

    def __post_init__(self):
        if self.mesh is not None and self.model.row_multiple % self.mesh.size:
            if self.model.row_multiple != 1:
                raise ValueError(f"the model's tables are padded to a multiple of {self.model.row_multiple} rows, "
                                 f"which does not split over the mesh's {self.mesh.size} devices")
            object.__setattr__(self, "model", self.model.clone(row_multiple=self.mesh.size))

    @property
    def stage(self):
        """The model's embedding stage (owner of every table)."""
        return self.model.embedding_stage()

    @property
    def table_paths(self) -> tuple[tuple[str, ...], ...]:
        return self.stage.table_paths

    # -- construction -------------------------------------------------------------------------------------------
    def init_params(self, seed_or_key, batch: dict) -> dict:
        """The model's parameters from ``seed_or_key`` (placed with their shardings on a mesh)."""
        key = jax.random.key(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key
        dense, ids = _example(batch)
        return _on_mesh(self, _init_params, key, dense, ids)

    def init(self, seed_or_key, batch: dict, params: dict | None = None) -> TrainState:
        """A fresh train state (parameters from ``seed_or_key`` unless ``params`` is given).

        Parameters, optimizer state and dedup scratch are created in one compiled program that writes each array
        once, in its final sharding: the peak memory is about the state itself (BENCHMARKS.md, "Init memory").
        """
        key = jax.random.key(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key
        key, rng = jax.random.split(key)
        dense, ids = _example(batch)
        if params is None:
            return _on_mesh(self, _init_state, key, rng, dense, ids)
        return _on_mesh(self, _state_from_params, params, rng)

    def _dense_tx(self) -> optax.GradientTransformation:
        if self.config.sparse:
            return self.config.optimizer.transform()
        paths = set(self.table_paths)

        def labels(params):
            flat = traverse_util.flatten_dict(params)
            return traverse_util.unflatten_dict({k: "table" if k in paths else "dense" for k in flat})

        return partitioned({"table": self.config.tables.transform(), "dense": self.config.optimizer.transform()},
                           labels)

    def _opt_states(self, params):
        """``(opt_state, table_opt_state, dedup)`` for fresh parameters (traceable)."""
        if not self.config.sparse:
            return self._dense_tx().init(params), None, None
        tables, rest = row_sparse.split_tables(params, self.table_paths)
        rs = RowSparse(self.config.tables)
        table_opt = {_name(p): rs.init(t) for p, t in tables.items()}
        n_rows = self.stage.n_rows
        dedup = jnp.zeros((n_rows,), jnp.int32) if n_rows <= row_sparse.SCATTER_DEDUP_MAX_ROWS else None
        return self._dense_tx().init(traverse_util.unflatten_dict(rest)), table_opt, dedup

    # -- shardings ----------------------------------------------------------------------------------------------
    def param_shardings(self, params):
        """Tables by rows over every device, everything else replicated (``None`` without a mesh)."""
        if self.mesh is None:
            return None
        rows, rep = distributed.rows_sharding(self.mesh), distributed.replicated(self.mesh)
        paths = set(self.table_paths)
        flat = traverse_util.flatten_dict(params)
        return traverse_util.unflatten_dict({k: rows if k in paths else rep for k in flat})

    def state_shardings(self, state: TrainState):
        """A ``NamedSharding`` per leaf of ``state``, chosen by the state's structure (``None`` without a mesh)."""
        if self.mesh is None:
            return None
        rows, rep = distributed.rows_sharding(self.mesh), distributed.replicated(self.mesh)
        p_sh = self.param_shardings(state.params)
        if self.config.sparse:
            opt_sh = jax.tree_util.tree_map(lambda _: rep, state.opt_state)
            table_sh = {k: row_sparse.RowSparseState(rep, None if st.sum is None else rows,
                                                     None if st.last is None else rows)
                        for k, st in state.table_opt_state.items()}
        else:  # the dense optimizer mirrors the parameters: its statistics with the tables' rows follow the tables
            n_rows = self.stage.n_rows
            opt_sh = jax.tree_util.tree_map(lambda x: rows if np.ndim(x) >= 1 and np.shape(x)[0] == n_rows else rep,
                                            state.opt_state)
            table_sh = None
        return TrainState(step=rep, params=p_sh, opt_state=opt_sh, table_opt_state=table_sh,
                          dedup=None if state.dedup is None else rows, rng=rep)

    def _constrain(self, state: TrainState) -> TrainState:
        if self.mesh is None:
            return state
        return jax.lax.with_sharding_constraint(state, self.state_shardings(state))

    def check_batch(self, batch: dict) -> dict:
        """A host (numpy) batch with its ids checked under the tables' OOV policy and made int32
        (:meth:`mlet_jax.embeddings.EmbeddingStage.check_ids`: under ``"error"`` an id outside its field's vocabulary
        is a ValueError naming the field); device arrays pass as they are (inside jit the policy clips or maps them).
        """
        ids = batch.get("ids")
        if ids is None or isinstance(ids, jax.Array):
            return batch
        return {**batch, "ids": self.stage.check_ids(ids)}

    def place_batch(self, batch: dict) -> dict:
        """Put a batch on the device(s): split over the data axis on a mesh (with several processes ``batch`` is
        this process's slice, :func:`mlet_jax.distributed.process_rows`); host ids are checked first
        (:meth:`check_batch`)."""
        batch = self.check_batch(batch)
        if self.mesh is None:
            return jax.device_put(batch)
        return distributed.shard_batch(batch, self.mesh)

    # -- steps --------------------------------------------------------------------------------------------------
    def loss_and_logits(self, params, batch, *, rng=None):
        rngs = {"dropout": rng} if rng is not None else None
        logits = self.model.apply({"params": params}, batch["dense"], batch["ids"], train=rng is not None,
                                  rngs=rngs)
        return bce_with_logits(logits, batch["label"], self.config.loss_reduction), logits

    @property
    def chunk_samples(self) -> int | None:
        """The step's chunk of samples (``TrainConfig.chunk_samples`` resolved), or ``None`` for one pass."""
        c = self.config.chunk_samples
        if c is None:
            return CHUNK_SAMPLES if self.mesh is None else None
        return c or None

    def _loss_fn(self, n_batch: int):
        """``(logits_c, batch_c) -> loss`` of a chunk of a batch of ``n_batch`` samples: chunks' losses add up to the
        batch's (a mean is a sum over the chunk over ``n_batch``)."""
        if self.config.loss_reduction == "sum":
            return lambda lg, b: bce_with_logits(lg, b["label"], "sum")
        return lambda lg, b: bce_with_logits(lg, b["label"], "sum") / n_batch

    def _dense_value_and_grad(self, params, batch, rng):
        """``(loss, grads)`` of the dense path: the features once, the body chunk by chunk
        (:func:`mlet_jax.row_sparse.body_value_and_grad`)."""
        n_b = np.shape(batch["ids"])[0]
        chunk = self.chunk_samples
        if chunk is None or chunk >= n_b:
            (loss, _), grads = jax.value_and_grad(self.loss_and_logits, has_aux=True)(params, batch, rng=rng)
            return loss, grads
        flat = traverse_util.flatten_dict(params)
        paths = set(self.table_paths)
        rest = {k: v for k, v in flat.items() if k not in paths}
        features, features_vjp = jax.vjp(
            lambda p: self.model.apply({"params": p}, batch["dense"], batch["ids"],
                                       method=lambda m, d, i: m.tables(d, i)), params)
        loss, g_rest, g_features = row_sparse.body_value_and_grad(
            self.model, self._loss_fn(n_b), rest, features, batch, chunk, rngs={"dropout": rng}, train=True)
        (grads,) = features_vjp(g_features)
        g_flat = traverse_util.flatten_dict(grads)
        return loss, traverse_util.unflatten_dict({k: g + g_rest[k] if k in g_rest else g for k, g in g_flat.items()})

    def compact_capacity(self, batch: dict) -> int | None:
        """The compact step's capacity in tiles for batches like ``batch`` (``TrainConfig.compact_headroom`` times
        the tiles its distinct rows fill, :func:`mlet_jax.row_sparse.batch_tiles`), or ``None`` for the fixed
        fraction (dense path, a mesh, headroom 0, or ids that are not concrete)."""
        ids = batch.get("ids")
        if (not self.config.sparse or self.mesh is not None or not self.config.compact_headroom or ids is None
                or isinstance(ids, jax.core.Tracer)):
            return None
        stage = self.stage
        rows = np.asarray(stage.row_ids(jnp.asarray(ids)))
        tile = row_sparse.compact_tile(rows.shape[0], stage.spec.kind == "mlet")
        return row_sparse.capacity_for(rows, stage.table_sizes, tile, self.config.compact_headroom)

    def _step(self, state: TrainState, batch: dict, capacity_tiles: int | None = None):
        if self.mesh is not None:
            batch = jax.lax.with_sharding_constraint(batch, distributed.batch_sharding(self.mesh))
        rng, step_rng = jax.random.split(state.rng)
        table_opt, dedup = state.table_opt_state, state.dedup
        if self.config.sparse:
            rs = RowSparse(self.config.tables)
            if rs.lazy_decay:  # the rows this batch reads, decayed up to now first (row_sparse's lazy SGD decay)
                rows_BxS = self.stage.row_ids(jnp.asarray(batch["ids"]))
                tables, rest = row_sparse.split_tables(state.params, self.table_paths)
                flat, table_opt = dict(rest), dict(table_opt)
                for p, t in tables.items():
                    flat[p], table_opt[_name(p)] = rs.catch_up(t, table_opt[_name(p)], rows_BxS)
                state = state.replace(params=traverse_util.unflatten_dict(flat), table_opt_state=table_opt)
            loss, g = row_sparse.value_and_grad(
                self.model, self._loss_fn(np.shape(batch["ids"])[0]), state.params, batch, state.dedup,
                rngs={"dropout": step_rng}, train=True, chunk=self.chunk_samples, capacity_tiles=capacity_tiles)
            tables, rest = row_sparse.split_tables(state.params, self.table_paths)
            rest_tree = traverse_util.unflatten_dict(rest)
            updates, opt_state = self._dense_tx().update(traverse_util.unflatten_dict(g.rest), state.opt_state,
                                                         rest_tree)
            flat = traverse_util.flatten_dict(optax.apply_updates(rest_tree, updates))
            table_opt = dict(table_opt)
            for p, t in (g.tables or tables).items():
                flat[p], table_opt[_name(p)] = rs.update(t, table_opt[_name(p)], g.rows_U, g.rows[p],
                                                         g.spilled_rows(p))
            params, dedup = traverse_util.unflatten_dict(flat), g.scratch_N
            gnorm = jnp.sqrt(_sq_norm(g.rest) + g.rows_sq_norm()) if self.config.grad_norm else None
        else:
            loss, grads = self._dense_value_and_grad(state.params, batch, step_rng)
            updates, opt_state = self._dense_tx().update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            gnorm = _global_norm(grads) if self.config.grad_norm else None
        new = self._constrain(TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                                         table_opt_state=table_opt, dedup=dedup, rng=rng))
        return new, ({"loss": loss, "grad_norm": gnorm} if self.config.grad_norm else {"loss": loss})

    @functools.cached_property
    def train_step(self) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
        """Jitted ``(state, batch) -> (state, metrics)``; the input state is donated (``.lower`` works too). A numpy
        batch's ids are checked first (:meth:`check_batch`). The first batch of each batch size fixes the compact
        step's capacity for that size (:meth:`compact_capacity`, a static argument of the compiled step)."""
        capacities: dict[int, int | None] = {}

        def capacity(batch):
            n_b = int(np.shape(batch["ids"])[0])
            if n_b not in capacities:
                capacities[n_b] = self.compact_capacity(batch)
            return capacities[n_b]

        def step(state, batch):
            batch = self.check_batch(batch)
            return _train_step(self, capacity(batch), state, batch)

        def lower(state, batch):
            batch = self.check_batch(batch)
            return _train_step.lower(self, capacity(batch), state, batch)

        step.lower = lower
        return step

    @functools.cached_property
    def eval_step(self) -> Callable[[dict, dict], jax.Array]:
        """Jitted ``(params, batch) -> logits`` (replicated on a mesh); numpy ids are checked first."""
        return lambda params, batch: _eval_step(self, params, self.check_batch(batch))

    # -- evaluation ---------------------------------------------------------------------------------------------
    def predict(self, params, split: Split, batch_size: int = 8192) -> np.ndarray:
        """Logits for every row of ``split`` (the last batch is padded, so one compiled shape serves all).

        On a mesh each batch is split over the data axis; with several processes every process reads only its slice
        of each batch and every process gets all logits.
        """
        n = len(split)
        out = np.empty(n, np.float32)
        bs = min(batch_size, max(n, 1))
        if self.mesh is not None:
            bs = -(-bs // self.mesh.shape[distributed.DATA]) * self.mesh.shape[distributed.DATA]
        for lo in range(0, n, bs):
            hi = min(n, lo + bs)
            idx = np.minimum(np.arange(lo, lo + bs), hi - 1)  # the last batch repeats its last row
            if self.mesh is not None:
                a, b = distributed.process_rows(bs)
                idx = idx[a:b]
            batch = {"dense": np.asarray(split.dense[idx], np.float32), "ids": np.asarray(split.ids[idx], np.int32)}
            logits = self.eval_step(params, self.place_batch(batch))
            out[lo:hi] = np.asarray(distributed.local_value(logits))[: hi - lo]
        return out

    def evaluate(self, params, split: Split, batch_size: int = 8192) -> dict[str, float]:
        """AUC, LogLoss and PR-AUC on a split."""
        return metrics_lib.binary_metrics(np.asarray(split.label), self.predict(params, split, batch_size))

    @property
    def lazy_decay(self) -> bool:
        """Whether table rows decay lazily (row-sparse SGD with weight decay): ``state.params`` is then current only
        after :meth:`sync`."""
        return self.config.sparse and RowSparse(self.config.tables).lazy_decay

    def sync(self, state: TrainState) -> TrainState:
        """``state`` with every table row brought up to its step (the input is donated when there is work).

        Row-sparse SGD with weight decay decays a row only when a batch touches it (exact, closed form,
        :mod:`mlet_jax.row_sparse`); before reading ``state.params`` (evaluation, export, collapse) call this.
        ``fit`` does it before every evaluation and checkpoint and at the end. Without lazy decay it returns
        ``state`` unchanged.
        """
        return _sync(self, state) if self.lazy_decay else state


def _example(batch: dict):
    # parameter shapes never depend on the batch size: initialize from one row
    return jnp.asarray(np.asarray(batch["dense"])[:1]), jnp.asarray(np.asarray(batch["ids"])[:1])


def _on_mesh(trainer: Trainer, fn, *args):
    """Run a jitted init under ``jax.set_mesh``, so that tables are generated row block by row block on the devices
    that own them (:func:`mlet_jax.embeddings.table_init`)."""
    if trainer.mesh is None:
        return fn(trainer, *args)
    with jax.set_mesh(trainer.mesh):
        return fn(trainer, *args)


def _fresh_state(trainer: Trainer, params, rng) -> TrainState:
    opt_state, table_opt, dedup = trainer._opt_states(params)
    return trainer._constrain(TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=opt_state,
                                         table_opt_state=table_opt, dedup=dedup, rng=rng))


# One jit each, the trainer static: JAX's own cache compiles once per equal (model, config, mesh) and input shapes.
@functools.partial(jax.jit, static_argnums=0)
def _init_params(trainer: Trainer, key, dense, ids):
    params = trainer.model.init(key, dense, ids)["params"]
    if trainer.mesh is not None:
        params = jax.lax.with_sharding_constraint(params, trainer.param_shardings(params))
    return params


@functools.partial(jax.jit, static_argnums=0)
def _init_state(trainer: Trainer, key, rng, dense, ids) -> TrainState:
    return _fresh_state(trainer, trainer.model.init(key, dense, ids)["params"], rng)


@functools.partial(jax.jit, static_argnums=0)
def _state_from_params(trainer: Trainer, params, rng) -> TrainState:
    return _fresh_state(trainer, params, rng)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def _train_step(trainer: Trainer, capacity_tiles, state: TrainState, batch: dict):
    return trainer._step(state, batch, capacity_tiles)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _sync(trainer: Trainer, state: TrainState) -> TrainState:
    tables, rest = row_sparse.split_tables(state.params, trainer.table_paths)
    rs, flat, table_opt = RowSparse(trainer.config.tables), dict(rest), dict(state.table_opt_state)
    for p, t in tables.items():
        flat[p], table_opt[_name(p)] = rs.materialize(t, table_opt[_name(p)])
    return trainer._constrain(state.replace(params=traverse_util.unflatten_dict(flat), table_opt_state=table_opt))


@functools.partial(jax.jit, static_argnums=0)
def _eval_step(trainer: Trainer, params, batch):
    if trainer.mesh is not None:
        batch = jax.lax.with_sharding_constraint(batch, distributed.batch_sharding(trainer.mesh))
    logits = trainer.model.apply({"params": params}, batch["dense"], batch["ids"])
    if trainer.mesh is not None:
        logits = jax.lax.with_sharding_constraint(logits, distributed.replicated(trainer.mesh))
    return logits


# -- the fit loop ---------------------------------------------------------------------------------------------------


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


HEALTHY_LOSS_FACTOR = 2.0  # a step's loss is healthy when finite and <= this times the running mean
HEALTHY_LOSS_DECAY = 0.95  # the running mean: an exponential moving average over healthy steps (~20 steps)


def prefetch(it: Iterable[dict], size: int = 2, place: Callable[[dict], Any] = jax.device_put) -> Iterator[dict]:
    """Place batches on the device(s) with ``place`` in a background thread, ``size`` ahead of the consumer.

    The thread stops and is joined on every exit path: exhaustion, an exception in the producer (re-raised here) or
    the consumer abandoning the generator (``close()``, an exception in the loop body).
    """
    q: queue.Queue = queue.Queue(maxsize=size)
    sentinel = object()
    err: list[BaseException] = []
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker():
        try:
            for b in it:
                if not put(place(b)):
                    return
        except BaseException as e:  # re-raised in the consumer
            err.append(e)
        finally:
            put(sentinel)

    t = threading.Thread(target=worker, daemon=True, name="mlet_jax-prefetch")
    t.start()
    try:
        while True:
            b = q.get()
            if b is sentinel:
                break
            yield b
        if err:
            raise err[0]
    finally:
        stop.set()
        t.join()


@dataclasses.dataclass
class History:
    """What ``fit`` measured: per-step losses, evaluations, throughput."""

    steps: list[int] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    evals: list[dict] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    train_samples: int = 0
    first_step_seconds: float = 0.0
    stopped_early: bool = False
    best_step: int | None = None
    records: list[dict] = dataclasses.field(default_factory=list)  # the run log's records (mlet_jax.runlog)
    spectra: list[dict] = dataclasses.field(default_factory=list)  # its "spectra" records (mlet_jax.spectra)

    @property
    def samples_per_second(self) -> float:
        """Training throughput after the first (compiling) step, evaluation excluded."""
        return self.train_samples / self.train_seconds if self.train_seconds else float("nan")


def fit(
    trainer: Trainer,
    train: Split,
    *,
    batch_size: int = 256,
    epochs: int = 1,
    seed: int = 0,
    valid: Split | None = None,
    eval_every: int | None = None,
    early_stopping_patience: int | None = None,
    state: TrainState | None = None,
    callbacks: Sequence[Callable[[int, TrainState], None]] = (),
    progress: bool = True,
    log_every: int = 50,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 2,
    mesh: jax.sharding.Mesh | None = None,
    run_log: Any = None,
    log_meta: dict | None = None,
    spectra_every: int | None = None,
) -> tuple[TrainState, History]:
    """Train for ``epochs`` passes over ``train`` (the paper: one epoch).

    Args:
        trainer: model and update rule.
        train: the training split.
        batch_size: rows per step (the last partial batch of an epoch is dropped, as one compiled shape serves all).
        epochs: passes over the data.
        seed: parameter init (when ``state`` is None), data order and dropout.
        valid: evaluated every ``eval_every`` steps and at the end of each epoch.
        eval_every: steps between evaluations (``None``: once per epoch).
        early_stopping_patience: stop after this many evaluations without a better validation AUC and return the
            train state of the best evaluation: its parameters *and* optimizer state, step and RNG, all of one step
            (a copy of the state is kept in device memory for it).
        state: resume from this state instead of initializing.
        callbacks: ``cb(step, state)`` after every step (copy what you keep: the state is donated to the next step).
            A callback's ``dict`` return value is a record: logged and kept in ``History.records``. A callback with
            a ``due(step)`` method is run off the throughput clock at the steps where it is due, and its optional
            ``on_start(step, state)`` / ``on_end(step, state)`` run before the first and after the last step
            (:class:`mlet_jax.spectra.SpectraCallback`).
        progress: show a tqdm bar.
        log_every: steps between recorded losses.
        checkpoint_dir: save the train state and the data position here (:class:`mlet_jax.checkpoint.Checkpointer`)
            every ``checkpoint_every`` steps and at the end. If it already holds a checkpoint, training resumes from
            the latest one (its state replaces ``state``) at the batch where it stopped, so an interrupted and
            resumed run gives exactly the parameters of an uninterrupted one (same ``seed``, ``batch_size`` and
            data). Evaluation history and early-stopping counters are not checkpointed.
        checkpoint_every: steps between checkpoints (``None``: only at the end).
        keep_checkpoints: how many of the newest checkpoints to keep. A checkpoint is written only when its
            step was healthy: loss and gradient norm finite and the loss at most ``HEALTHY_LOSS_FACTOR`` (2) times
            the running mean of the training loss (an exponential moving average, decay ``HEALTHY_LOSS_DECAY``
            = 0.95, over this call's healthy steps; the first step sets it). A step above the bound is not
            saved, and a checkpoint whose own state gives an unhealthy loss at the next step (a step's loss is
            computed before its update) is deleted again when an older one remains (each with a
            :class:`~mlet_jax.checkpoint.CheckpointWarning`). So the checkpoint a :class:`NonFiniteLossError`
            names has not diverged, and resuming it with a lower learning rate trains on.
        mesh: train on this device mesh (shorthand for ``Trainer(model, config, mesh=mesh)``; the trainer must not
            have another mesh). With several processes every process calls ``fit`` with the same arguments and
            reads only its rows of each batch.
        run_log: a path or an open :class:`mlet_jax.runlog.RunLog` (left open): every record (``start``, ``train``
            every ``log_every`` steps with loss and samples/s, ``eval``, ``spectra``, ``end`` or ``error``) is
            appended as one JSON line as it happens (process 0 writes). A path is refused unless it is missing,
            empty or a run log written before (a resumed run appends). ``History.records`` holds the same records.
        log_meta: JSON-able settings for the ``start`` record (the CLI passes the run's settings).
        spectra_every: every this many steps (and before the first and after the last), record the singular values,
            effective rank and information abundance of each field's collapsed table
            (:class:`mlet_jax.spectra.SpectraCallback`) into the log and ``History.spectra``.
    Returns:
        The final (or best, with early stopping) state and a :class:`History`. On a mesh the state is sharded and
        its tables carry the padding rows (:func:`mlet_jax.models.strip_padding`).
    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the message names the step (and the last healthy
            checkpoint when checkpointing).
        mlet_jax.checkpoint.CheckpointMismatchError: ``checkpoint_dir`` holds a checkpoint of another model (one
            line naming the array and both shapes). A damaged newest step is skipped with a warning and the newest
            intact one is restored; a directory without checkpoints starts fresh, with a warning saying so.
    """
    from tqdm.auto import tqdm

    if mesh is not None and trainer.mesh is not mesh:
        if trainer.mesh is not None:
            raise ValueError("fit(mesh=...) was given a trainer that already has another mesh")
        trainer = dataclasses.replace(trainer, mesh=mesh)
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size} and {epochs}")
    if len(train) < batch_size:
        raise ValueError(f"the training split has {len(train)} rows, fewer than one batch of {batch_size}")
    if early_stopping_patience is not None and valid is None:
        raise ValueError("early stopping needs a validation split")
    if checkpoint_every is not None and (checkpoint_every < 1 or checkpoint_dir is None):
        raise ValueError(f"checkpoint_every must be >= 1 and needs checkpoint_dir, got {checkpoint_every}")
    if trainer.mesh is not None:
        distributed.process_rows(batch_size)  # raises unless the batch splits over the processes
        if batch_size % trainer.mesh.shape[distributed.DATA]:
            raise ValueError(f"batch_size {batch_size} does not split over the mesh's data axis "
                             f"({trainer.mesh.shape[distributed.DATA]} devices)")
    if spectra_every is not None:
        callbacks = (*callbacks, SpectraCallback(trainer.model.vocab_sizes, spectra_every))
    writes_log = run_log is not None and jax.process_index() == 0
    if writes_log and not isinstance(run_log, RunLog):
        check_target(run_log)  # refused before any work; opened once the state is ready
    steps_per_epoch = len(train) // batch_size
    fresh = state is None
    if fresh:
        state = trainer.init(seed, next(batches(train, min(batch_size, 1), seed=seed)))
    ckpt, start_epoch, start_batch = None, 0, 0
    if checkpoint_dir is not None:
        ckpt = Checkpointer(checkpoint_dir, keep=keep_checkpoints)
        if ckpt.latest_step() is None:
            warnings.warn(f"no checkpoint in {ckpt.directory}: training starts fresh", CheckpointWarning,
                          stacklevel=2)
        else:
            target = state
            if fresh:  # our own initial state: the restore needs only its shapes, so it is freed first (one state)
                target = jax.tree_util.tree_map(
                    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
                del state
            state, start_epoch, start_batch = _resume(ckpt, target, seed=seed, batch_size=batch_size,
                                                      steps_per_epoch=steps_per_epoch)
    log = None
    try:
        if writes_log:
            log = run_log if isinstance(run_log, RunLog) else RunLog(run_log)
        return _fit_loop(trainer, train, state, batch_size=batch_size, epochs=epochs, seed=seed, valid=valid,
                         eval_every=eval_every, early_stopping_patience=early_stopping_patience,
                         callbacks=callbacks, progress=progress, log_every=log_every, ckpt=ckpt,
                         checkpoint_every=checkpoint_every, start_epoch=start_epoch, start_batch=start_batch,
                         steps_per_epoch=steps_per_epoch, tqdm=tqdm, log=log, log_meta=log_meta)
    except BaseException as e:
        if log is not None:
            log.write({"event": "error", "step": log.last_step, "error": type(e).__name__, "message": str(e)})
        raise
    finally:
        if ckpt is not None:
            ckpt.close()
        if log is not None and log is not run_log:
            log.close()


def _resume(ckpt: Checkpointer, target, *, seed, batch_size, steps_per_epoch):
    """``(state, epoch, batch)``: ``ckpt``'s newest intact checkpoint restored into ``target``'s structure."""
    try:
        # damaged newer steps are renamed aside, so this run can save those step numbers again
        state, pos = ckpt.restore(target, set_aside_damaged=True)
    except BaseException:
        ckpt.close()
        raise
    want = {"seed": seed, "batch_size": batch_size, "steps_per_epoch": steps_per_epoch}
    have = {k: pos.get(k) for k in want}
    if have != want:
        ckpt.close()
        raise ValueError(f"checkpoint step {pos['step']} in {ckpt.directory} was written with data settings {have}, "
                         f"but this run has {want}; resume with the same seed, batch size and training split "
                         "(or use a new checkpoint_dir)")
    return state, int(pos["epoch"]), int(pos["batch"])


def _fit_loop(trainer, train, state, *, batch_size, epochs, seed, valid, eval_every, early_stopping_patience,
              callbacks, progress, log_every, ckpt, checkpoint_every, start_epoch, start_batch, steps_per_epoch,
              tqdm, log=None, log_meta=None):
    import itertools

    hist = History()

    def record(rec):  # one run-log record: kept, and written (flushed) when there is a log
        hist.records.append(rec)
        if rec.get("event") == "spectra":
            hist.spectra.append(rec)
        if log is not None:
            log.write(rec)

    best_auc, best_state, bad_evals = -math.inf, None, 0
    step_fn = trainer.train_step
    start_step = int(state.step)
    done_before = start_epoch * steps_per_epoch + start_batch
    bar = tqdm(total=steps_per_epoch * epochs, initial=min(done_before, steps_per_epoch * epochs),
               disable=not progress, desc="train", unit="step", leave=False)
    last_good: list[int] = [] if ckpt is None or ckpt.latest_step() is None else [ckpt.latest_step()]
    mean_loss = None  # running mean of the healthy steps' losses (HEALTHY_LOSS_DECAY)
    skipping = False  # a save was skipped since the last one written (warn once per run of skips)
    written: set[int] = set()  # checkpoints this call wrote (only those may be taken back)

    def healthy(v):
        return math.isfinite(v) and (mean_loss is None or v <= HEALTHY_LOSS_FACTOR * mean_loss)

    def observe(v):
        nonlocal mean_loss
        if healthy(v):
            mean_loss = v if mean_loss is None else HEALTHY_LOSS_DECAY * mean_loss + (1 - HEALTHY_LOSS_DECAY) * v

    def evaluate(step):
        nonlocal best_auc, best_state, bad_evals, state
        state = trainer.sync(state)  # lazily decayed table rows brought up to date (a no-op otherwise)
        m = trainer.evaluate(state.params, valid)
        hist.evals.append({"step": step, **m})
        record({"event": "eval", **hist.evals[-1]})
        if m["auc"] > best_auc:
            best_auc, bad_evals, hist.best_step = m["auc"], 0, step
            if early_stopping_patience is not None:  # the whole state of this step: the next step donates it
                best_state = jax.tree_util.tree_map(lambda x: x.copy(), state)
        else:
            bad_evals += 1
        return early_stopping_patience is not None and bad_evals > early_stopping_patience

    def confirm(step, v):
        # A checkpoint's state is first evaluated by the next step's loss (a step's loss is computed before its
        # update). If that loss is unhealthy the checkpoint already diverged: take it back when an older one remains.
        if not last_good or last_good[-1] + 1 != step or last_good[-1] not in written or healthy(v):
            return
        if len(last_good) < 2 or last_good[-2] not in ckpt.all_steps():
            return  # keep_checkpoints=1 left no older one: keep it rather than nothing
        bad = last_good.pop()
        ckpt.delete(bad)
        warnings.warn(f"removed checkpoint step {bad}: the loss computed on it (step {step}) was {v:.4g}, not within "
                      f"{HEALTHY_LOSS_FACTOR:g}x the running mean {mean_loss:.4g}; the newest checkpoint is step "
                      f"{last_good[-1]}", CheckpointWarning, stacklevel=3)

    def check(loss, step, grad_norm=None, params=None) -> float:
        try:
            v = _check_finite(loss, step)
            if grad_norm is not None:
                _check_finite(grad_norm, step, what="gradient norm")
            if params is not None and not bool(_all_finite(params)):
                _check_finite(float("nan"), step, what="parameters (some entry)")
            return v
        except NonFiniteLossError as e:
            if ckpt is None:
                raise
            confirm(step, float("nan"))
            where = (f"the last good checkpoint is step {last_good[-1]} in {ckpt.directory} (its loss was within "
                     f"{HEALTHY_LOSS_FACTOR:g}x the running mean); rerun fit with the same checkpoint_dir and a lower "
                     "learning rate to resume from it" if last_good else
                     f"no checkpoint was written before it in {ckpt.directory}")
            raise NonFiniteLossError(f"{e}. Training stopped; {where}") from None

    def save(step, epoch, batch_in_epoch, m):
        nonlocal skipping
        # never checkpoint a state whose step already went bad: not finite, or finite but diverging
        v = check(m["loss"], step, m.get("grad_norm"), None if "grad_norm" in m else state.params)
        if not healthy(v):
            if not skipping:
                newest = f"step {last_good[-1]}" if last_good else "none"
                warnings.warn(f"not checkpointing step {step}: its training loss {v:.4g} is above "
                              f"{HEALTHY_LOSS_FACTOR:g}x the running mean {mean_loss:.4g} (diverging?); the newest "
                              f"checkpoint stays {newest}", CheckpointWarning, stacklevel=2)
            skipping = True
            return
        skipping = False
        if batch_in_epoch == steps_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        ckpt.save(state, {"epoch": epoch, "batch": batch_in_epoch, "seed": seed, "batch_size": batch_size,
                          "steps_per_epoch": steps_per_epoch})
        last_good.append(step)
        written.add(step)

    def judge(loss, step):  # a finished step's loss: checked finite, judged against the mean, then averaged in
        v = check(loss, step)
        if ckpt is not None:
            confirm(step, v)
        observe(v)

    record(start_record(step=start_step, resumed=done_before > 0, meta=log_meta, batch_size=batch_size,
                        epochs=epochs, seed=seed, steps_per_epoch=steps_per_epoch))
    for cb in callbacks:
        if hasattr(cb, "on_start") and isinstance(out := cb.on_start(start_step, state), dict):
            record(out)
    wall0 = time.perf_counter()
    last_log = [start_step + 1, 0.0]  # the step and train-clock seconds of the previous "train" record
    prev_loss = None
    m = None
    t0 = time.perf_counter()
    stop = False
    step = start_step
    epoch, i = start_epoch, start_batch
    for epoch in range(start_epoch, epochs):
        skip = start_batch if epoch == start_epoch else 0
        # batches() fixes the order by (seed, epoch); a resumed epoch skips the batches already trained on.
        it = itertools.islice(_process_batches(trainer, train, batch_size, seed, epoch), skip, None)
        for i, batch in enumerate(prefetch(it, place=trainer.place_batch), start=skip + 1):
            state, m = step_fn(state, batch)
            step += 1
            if step == start_step + 1:  # compile + first step: kept out of the throughput
                jax.block_until_ready(m["loss"])
                hist.first_step_seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
            if prev_loss is not None:
                judge(*prev_loss)
            prev_loss = (m["loss"], step)
            for cb in callbacks:
                if hasattr(cb, "due") and cb.due(step):  # a measuring callback: kept off the throughput clock
                    state = trainer.sync(state)
                    jax.block_until_ready(state)
                    hist.train_seconds += time.perf_counter() - t0
                    out = cb(step, state)
                    t0 = time.perf_counter()
                else:
                    out = cb(step, state)
                if isinstance(out, dict):
                    record(out)
            if step % log_every == 0:
                hist.steps.append(step)
                hist.losses.append(float(m["loss"]))
                clock = hist.train_seconds + time.perf_counter() - t0
                n, dt = (step - last_log[0]) * batch_size, clock - last_log[1]
                record({"event": "train", "step": step, "epoch": epoch, "loss": hist.losses[-1],
                        "samples_per_s": n / dt if n > 0 and dt > 0 else None,
                        "elapsed_s": time.perf_counter() - wall0})
                last_log[:] = [step, clock]
                bar.set_postfix(loss=f"{hist.losses[-1]:.4f}")
            bar.update(1)
            if ckpt is not None and checkpoint_every and step % checkpoint_every == 0:
                save(step, epoch, i, m)
            if valid is not None and eval_every and step % eval_every == 0:
                hist.train_seconds += time.perf_counter() - t0
                stop = evaluate(step)
                t0 = time.perf_counter()
                if stop:
                    break
        if stop:
            break
        if valid is not None and not eval_every and prev_loss is not None:
            check(*prev_loss)  # observed (running mean) at the next step or at the end
            hist.train_seconds += time.perf_counter() - t0
            stop = evaluate(step)
            t0 = time.perf_counter()
            if stop:
                break
    if prev_loss is not None:
        judge(*prev_loss)  # the last step: it may take back the checkpoint of the step before it
    if ckpt is not None and m is not None and last_good[-1:] != [step]:
        save(step, epoch, i, m)
    state = trainer.sync(state)
    jax.block_until_ready(state.params)
    hist.train_seconds += time.perf_counter() - t0
    hist.train_samples = max(step - start_step - 1, 0) * batch_size
    bar.close()
    hist.stopped_early = stop
    for cb in callbacks:
        if hasattr(cb, "on_end") and isinstance(out := cb.on_end(step, state), dict):
            record(out)
    record({"event": "end", "step": step, "train_samples": hist.train_samples, "train_seconds": hist.train_seconds,
            "samples_per_s": hist.samples_per_second if hist.train_seconds else None,
            "first_step_s": hist.first_step_seconds, "stopped_early": stop, "best_step": hist.best_step,
            "elapsed_s": time.perf_counter() - wall0})
    if best_state is not None:
        state = best_state
    return state, hist


def _process_batches(trainer: Trainer, train: Split, batch_size: int, seed: int, epoch: int) -> Iterator[dict]:
    """The epoch's batches, each as this process's rows only (all rows with one process)."""
    if trainer.mesh is None or jax.process_count() == 1:
        yield from batches(train, batch_size, seed=seed, epoch=epoch)
        return
    lo, hi = distributed.process_rows(batch_size)
    order = epoch_order(len(train), seed=seed, shuffle=True, epoch=epoch)
    for start in range(0, (len(train) // batch_size) * batch_size, batch_size):
        # the same rows, in the same order, as batches() puts at lo:hi of the global batch
        yield take_rows(train, np.sort(order[start:start + batch_size])[lo:hi])


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _check_finite(loss, step, what="training loss") -> float:
    v = float(loss)
    if not math.isfinite(v):
        raise NonFiniteLossError(f"the {what} became {v} at step {step}; lower the learning rate or check "
                                 "the input for NaN/inf")
    return v
