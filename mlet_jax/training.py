"""Train state, jitted train/eval steps and the ``fit`` loop.

``Trainer(model, config)`` builds pure functions of ``(state, batch)``:

* ``train_step(state, batch) -> (state, metrics)``: binary cross-entropy on logits, one optimizer step; jitted once
  per (model, config, batch shape) with the state donated.
* ``eval_step(params, batch) -> logits``: jitted.

Two update paths give the same numbers (tests check 20 steps against each other):

* dense: ``jax.grad`` over every parameter and one ``optax.partition`` optimizer (tables and the rest may use
  different torch optimizers);
* row-sparse (default whenever it is exact: SGD without momentum or Adagrad, no weight decay on tables): the
  batch's unique table rows are gathered once, the model runs on them (``ids_are_rows=True``), and only those rows
  and their Adagrad accumulators are updated. Cost grows with the batch, not with the table. MLET projections and
  MLPs stay dense parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from mlet_jax import metrics as metrics_lib
from mlet_jax.data.base import Split, batches
from mlet_jax.optim import OptimizerSpec, RowSparse, partitioned


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How parameters are updated.

    Attributes:
        optimizer: torch optimizer for the dense parameters (MLPs, MLET projections, ...), and for the tables
            unless ``table_optimizer`` is given. Paper: SGD lr 0.2 for DLRM, Adagrad lr 0.02 for the rest.
        table_optimizer: optimizer for parameters named ``table`` (embedding and first-order tables).
        sparse_tables: update only the batch's rows of each table; ``None`` picks it whenever it is exact.
        loss_reduction: ``"mean"`` over the batch (DLRM reference) or ``"sum"`` (DeepCTR-Torch).
        grad_norm: also return the global gradient norm in every step's metrics (``"grad_norm"``). Off by
            default: it is one more pass over every gradient, 5-7% of a DCN or DeepFM step with MLET tables.
            Without it ``fit`` checks the parameters themselves for NaN/inf before each checkpoint.
    """

    optimizer: OptimizerSpec = OptimizerSpec()
    table_optimizer: OptimizerSpec | None = None
    sparse_tables: bool | None = None
    loss_reduction: str = "mean"
    grad_norm: bool = False

    def __post_init__(self):
        if self.loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {self.loss_reduction!r}")
        if self.sparse_tables and not self.tables.supports_row_sparse:
            raise ValueError("sparse_tables=True needs a table optimizer without weight decay or momentum")

    @property
    def tables(self) -> OptimizerSpec:
        return self.table_optimizer or self.optimizer

    @property
    def sparse(self) -> bool:
        return self.tables.supports_row_sparse if self.sparse_tables is None else self.sparse_tables


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    table_state: Any
    rng: jax.Array


def _is_table(key: tuple) -> bool:
    return key[-1] == "table"


def split_tables(params) -> tuple[dict, dict]:
    """``(tables, rest)`` as flat ``{path: array}`` dicts."""
    flat = traverse_util.flatten_dict(params)
    tables = {k: v for k, v in flat.items() if _is_table(k)}
    rest = {k: v for k, v in flat.items() if not _is_table(k)}
    return tables, rest


def bce_with_logits(logits, labels, reduction: str = "mean"):
    losses = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
    return losses.mean() if reduction == "mean" else losses.sum()


def _global_norm(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)) if leaves else jnp.zeros([])


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Pure, jitted training functions for one model and one update rule."""

    model: Any
    config: TrainConfig = TrainConfig()

    # -- construction -------------------------------------------------------------------------------------------
    def init_params(self, seed_or_key, batch: dict) -> dict:
        key = jax.random.key(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key
        return _jit_init(self.model)(key, jnp.asarray(batch["dense"]), jnp.asarray(batch["ids"]))

    def init(self, seed_or_key, batch: dict, params: dict | None = None) -> TrainState:
        """A fresh train state (parameters from ``seed_or_key`` unless ``params`` is given)."""
        key = jax.random.key(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key
        key, rng = jax.random.split(key)
        if params is None:
            params = self.init_params(key, batch)
        tables, rest = split_tables(params)
        if self.config.sparse:
            rs = RowSparse(self.config.tables)
            opt_state = self._dense_tx().init(rest)
            table_state = {"/".join(k): rs.init(v) for k, v in tables.items()}
            n_rows = int(sum(_embedding_module(self.model).vocab_sizes))
            if n_rows <= _SCATTER_DEDUP_MAX_ROWS:
                table_state[_DEDUP_KEY] = jnp.zeros((n_rows,), jnp.int32)
        else:
            opt_state = self._dense_tx().init(params)
            table_state = None
        return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=opt_state,
                          table_state=table_state, rng=rng)

    def _dense_tx(self) -> optax.GradientTransformation:
        if self.config.sparse:
            return self.config.optimizer.transform()
        return partitioned({"table": self.config.tables.transform(), "dense": self.config.optimizer.transform()})

    # -- steps --------------------------------------------------------------------------------------------------
    def loss_and_logits(self, params, batch, *, ids_are_rows=False, rng=None):
        rngs = {"dropout": rng} if rng is not None else None
        logits = self.model.apply({"params": params}, batch["dense"], batch["ids"], ids_are_rows=ids_are_rows,
                                  train=rng is not None, rngs=rngs)
        return bce_with_logits(logits, batch["label"], self.config.loss_reduction), logits

    def _train_step(self, state: TrainState, batch: dict):
        rng, step_rng = jax.random.split(state.rng)
        if self.config.sparse:
            params, opt_state, table_state, loss, gnorm = self._sparse_update(state, batch, step_rng)
        else:
            (loss, _), grads = jax.value_and_grad(self.loss_and_logits, has_aux=True)(
                state.params, batch, rng=step_rng)
            updates, opt_state = self._dense_tx().update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            table_state, gnorm = None, (_global_norm(grads) if self.config.grad_norm else None)
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, table_state=table_state, rng=rng)
        return new, ({"loss": loss, "grad_norm": gnorm} if self.config.grad_norm else {"loss": loss})

    def _sparse_update(self, state: TrainState, batch: dict, rng):
        tables, rest = split_tables(state.params)
        emb = _embedding_module(self.model)
        rows_BxS = emb.row_ids(jnp.asarray(batch["ids"]))
        table_state = dict(state.table_state)
        uniq_U, inv_BxS, scratch_N = _dedup_rows(rows_BxS, table_state.get(_DEDUP_KEY))
        if scratch_N is not None:
            table_state[_DEDUP_KEY] = scratch_N
        gathered = {k: v.at[uniq_U].get(mode="promise_in_bounds") for k, v in tables.items()}

        def loss_fn(rest_p, rows_p):
            params = traverse_util.unflatten_dict({**rest_p, **rows_p})
            return self.loss_and_logits(params, {**batch, "ids": inv_BxS}, ids_are_rows=True, rng=rng)

        (loss, _), (g_rest, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(rest, gathered)
        updates, opt_state = self._dense_tx().update(g_rest, state.opt_state, rest)
        rest = optax.apply_updates(rest, updates)
        rs = RowSparse(self.config.tables)
        for k, t in tables.items():
            name = "/".join(k)
            tables[k], table_state[name] = rs.update(t, table_state[name], uniq_U, g_rows[k])
        params = traverse_util.unflatten_dict({**rest, **tables})
        gnorm = _global_norm((g_rest, g_rows)) if self.config.grad_norm else None
        return params, opt_state, table_state, loss, gnorm

    @functools.cached_property
    def train_step(self) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
        """Jitted ``(state, batch) -> (state, metrics)``; the input state is donated."""
        return _jit_train_step(self)

    @functools.cached_property
    def eval_step(self) -> Callable[[dict, dict], jax.Array]:
        """Jitted ``(params, batch) -> logits``."""
        return _jit_eval(self.model)

    # -- evaluation ---------------------------------------------------------------------------------------------
    def predict(self, params, split: Split, batch_size: int = 8192) -> np.ndarray:
        """Logits for every row of ``split`` (the last batch is padded, so one compiled shape serves all)."""
        n = len(split)
        out = np.empty(n, np.float32)
        bs = min(batch_size, max(n, 1))
        for lo in range(0, n, bs):
            hi = min(n, lo + bs)
            b = {"dense": np.asarray(split.dense[lo:hi], np.float32), "ids": np.asarray(split.ids[lo:hi], np.int32)}
            if hi - lo < bs:
                b = {k: np.concatenate([v, np.repeat(v[-1:], bs - (hi - lo), axis=0)]) for k, v in b.items()}
            out[lo:hi] = np.asarray(self.eval_step(params, b))[: hi - lo]
        return out

    def evaluate(self, params, split: Split, batch_size: int = 8192) -> dict[str, float]:
        """AUC, LogLoss and PR-AUC on a split."""
        return metrics_lib.binary_metrics(np.asarray(split.label), self.predict(params, split, batch_size))


_STEP_CACHE: dict = {}


# Equal (hashable) models share one compiled init and eval function: a seed sweep compiles each once.
@functools.lru_cache(maxsize=128)
def _jit_init(model):
    # jitted: op-by-op init of a large table compiles each random initializer separately (seconds per model)
    return jax.jit(lambda key, dense, ids: model.init(key, dense, ids)["params"])


@functools.lru_cache(maxsize=128)
def _jit_eval(model):
    return jax.jit(lambda params, batch: model.apply({"params": params}, batch["dense"], batch["ids"]))


def _jit_train_step(trainer: Trainer):
    # Trainers are frozen dataclasses of hashable modules and configs: equal trainers share one compiled step.
    key = (trainer.model, trainer.config)
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = jax.jit(trainer._train_step, donate_argnums=(0,))
    return _STEP_CACHE[key]


# Up to this many table rows the row-sparse state carries a table-sized int32 dedup scratch (Trainer.init), and the
# step finds each batch row's slot by a scatter and a gather of O(B S) entries; above it, through a sort.
_SCATTER_DEDUP_MAX_ROWS = 1 << 23
# The row-sparse state's dedup scratch (see _dedup_rows); the "/table" suffix shards it by rows like the tables.
_DEDUP_KEY = "row_dedup/table"


def _dedup_rows(rows_BxS: jax.Array, scratch_N: jax.Array | None = None):
    """Slots for the row-sparse step: ``(rows_U, slot_BxS, scratch_N)`` with ``U = B S``, slot-major.

    Slot ``s B + b`` holds the row of occurrence ``(b, s)`` (``rows_U = rows_BxS.T.reshape(-1)``, padding as row 0),
    so slot ``u`` belongs to id slot ``u // B`` and hence to one field: an MLET table can project the gathered slots
    before the per-occurrence lookup (:class:`mlet_jax.embeddings.Embeddings`). ``slot_BxS`` (-1 for padding)
    points every occurrence at one slot holding its row, the same for all occurrences of a row, so gradients of
    repeated ids sum into that slot; the other slots repeat a row with a zero gradient, which
    :class:`mlet_jax.optim.RowSparse` adds as nothing.

    XLA's CPU sort (``jnp.unique``) cost a sixth of a DeepFM step at batch 1024 (26,624 ids). Given a table-sized
    int32 ``scratch_N`` (the train state holds one for tables up to ``_SCATTER_DEDUP_MAX_ROWS`` rows), every
    occurrence instead writes its slot number into it at its row and reads back whichever slot landed there (any
    one occurrence's: all of them hold the row). Only the batch's rows are written and read, so the scratch never
    needs clearing: the state carries it from step to step (donated, updated in place). Without one,
    ``jnp.unique`` groups equal rows and a ``U``-sized scatter-min picks each group's first slot; ``scratch_N`` is
    then returned as ``None``.
    """
    flat = rows_BxS.T.reshape(-1)
    valid = flat >= 0
    safe = jnp.where(valid, flat, 0)
    occ = jnp.arange(flat.size, dtype=jnp.int32)
    if scratch_N is None:
        _, group = jnp.unique(safe, size=flat.size, fill_value=0, return_inverse=True)
        group = group.reshape(-1)
        first_G = jnp.full((flat.size,), flat.size, jnp.int32).at[group].min(jnp.where(valid, occ, flat.size),
                                                                            mode="promise_in_bounds")
        slot = first_G.at[group].get(mode="promise_in_bounds")
    else:
        # padding writes nowhere (an out-of-range index is dropped): its slot must not stand for row 0 of field 0
        scratch_N = scratch_N.at[jnp.where(valid, flat, scratch_N.shape[0])].set(occ, mode="drop")
        slot = scratch_N.at[safe].get(mode="promise_in_bounds")
    slot_BxS = jnp.where(valid, slot, -1).reshape(rows_BxS.shape[::-1]).T
    return safe, slot_BxS, scratch_N


def _embedding_module(model):
    from mlet_jax.embeddings import Embeddings

    return Embeddings(model.vocab_sizes, model.embedding, getattr(model, "slots", None),
                      getattr(model, "pooling", "sum"))


# -- the fit loop ---------------------------------------------------------------------------------------------------


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def prefetch(it: Iterable[dict], size: int = 2) -> Iterator[dict]:
    """Move batches to the device in a background thread, ``size`` ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=size)
    sentinel = object()
    err: list[BaseException] = []

    def worker():
        try:
            for b in it:
                q.put(jax.device_put(b))
        except BaseException as e:  # re-raised in the consumer
            err.append(e)
        finally:
            q.put(sentinel)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    while True:
        b = q.get()
        if b is sentinel:
            break
        yield b
    if err:
        raise err[0]


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
            best parameters seen.
        state: resume from this state instead of initializing.
        callbacks: ``cb(step, state)`` after every step (copy what you keep: the state is donated to the next step).
        progress: show a tqdm bar.
        log_every: steps between recorded losses.
        checkpoint_dir: save the train state and the data position here (:class:`mlet_jax.checkpoint.Checkpointer`)
            every ``checkpoint_every`` steps and at the end. If it already holds a checkpoint, training resumes from
            the latest one (its state replaces ``state``) at the batch where it stopped, so an interrupted and
            resumed run gives exactly the parameters of an uninterrupted one (same ``seed``, ``batch_size`` and
            data). Evaluation history and early-stopping counters are not checkpointed.
        checkpoint_every: steps between checkpoints (``None``: only at the end).
        keep_checkpoints: how many of the newest checkpoints to keep. A checkpoint is written only after its
            step's loss and gradient norm were checked finite, so a NaN never overwrites the last good one.
    Returns:
        The final (or best, with early stopping) state and a :class:`History`.
    Raises:
        NonFiniteLossError: the loss became NaN or infinite; the message names the step (and the last good
            checkpoint when checkpointing).
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size} and {epochs}")
    if len(train) < batch_size:
        raise ValueError(f"the training split has {len(train)} rows, fewer than one batch of {batch_size}")
    if early_stopping_patience is not None and valid is None:
        raise ValueError("early stopping needs a validation split")
    if checkpoint_every is not None and (checkpoint_every < 1 or checkpoint_dir is None):
        raise ValueError(f"checkpoint_every must be >= 1 and needs checkpoint_dir, got {checkpoint_every}")
    steps_per_epoch = len(train) // batch_size
    if state is None:
        state = trainer.init(seed, next(batches(train, batch_size, seed=seed)))
    ckpt, start_epoch, start_batch = None, 0, 0
    if checkpoint_dir is not None:
        state, ckpt, start_epoch, start_batch = _resume(trainer, state, checkpoint_dir, keep_checkpoints,
                                                        seed=seed, batch_size=batch_size,
                                                        steps_per_epoch=steps_per_epoch)
    try:
        return _fit_loop(trainer, train, state, batch_size=batch_size, epochs=epochs, seed=seed, valid=valid,
                         eval_every=eval_every, early_stopping_patience=early_stopping_patience,
                         callbacks=callbacks, progress=progress, log_every=log_every, ckpt=ckpt,
                         checkpoint_every=checkpoint_every, start_epoch=start_epoch, start_batch=start_batch,
                         steps_per_epoch=steps_per_epoch, tqdm=tqdm)
    finally:
        if ckpt is not None:
            ckpt.close()


def _resume(trainer, state, directory, keep, *, seed, batch_size, steps_per_epoch):
    """Open ``directory``; restore its latest checkpoint (if any) into ``state``'s structure."""
    from mlet_jax.checkpoint import Checkpointer

    ckpt = Checkpointer(directory, keep=keep)
    if ckpt.latest_step() is None:
        return state, ckpt, 0, 0
    state, pos = ckpt.restore(state)
    want = {"seed": seed, "batch_size": batch_size, "steps_per_epoch": steps_per_epoch}
    have = {k: pos.get(k) for k in want}
    if have != want:
        ckpt.close()
        raise ValueError(f"checkpoint step {pos['step']} in {ckpt.directory} was written with data settings {have}, "
                         f"but this run has {want}; resume with the same seed, batch size and training split "
                         "(or use a new checkpoint_dir)")
    return state, ckpt, int(pos["epoch"]), int(pos["batch"])


def _fit_loop(trainer, train, state, *, batch_size, epochs, seed, valid, eval_every, early_stopping_patience,
              callbacks, progress, log_every, ckpt, checkpoint_every, start_epoch, start_batch, steps_per_epoch,
              tqdm):
    import itertools

    hist = History()
    best_auc, best_params, bad_evals = -math.inf, None, 0
    step_fn = trainer.train_step
    start_step = int(state.step)
    done_before = start_epoch * steps_per_epoch + start_batch
    bar = tqdm(total=steps_per_epoch * epochs, initial=min(done_before, steps_per_epoch * epochs),
               disable=not progress, desc="train", unit="step", leave=False)
    last_good: list[int] = [] if ckpt is None or ckpt.latest_step() is None else [ckpt.latest_step()]

    def evaluate(step):
        nonlocal best_auc, best_params, bad_evals
        m = trainer.evaluate(state.params, valid)
        hist.evals.append({"step": step, **m})
        if m["auc"] > best_auc:
            best_auc, bad_evals, hist.best_step = m["auc"], 0, step
            if early_stopping_patience is not None:
                best_params = jax.tree_util.tree_map(np.array, state.params)
        else:
            bad_evals += 1
        return early_stopping_patience is not None and bad_evals > early_stopping_patience

    def check(loss, step, grad_norm=None, params=None):
        try:
            _check_finite(loss, step)
            if grad_norm is not None:
                _check_finite(grad_norm, step, what="gradient norm")
            if params is not None and not bool(_all_finite(params)):
                _check_finite(float("nan"), step, what="parameters (some entry)")
        except NonFiniteLossError as e:
            if ckpt is None:
                raise
            where = (f"the last good checkpoint is step {last_good[-1]} in {ckpt.directory}; rerun fit with the same "
                     "checkpoint_dir (and a lower learning rate) to resume from it" if last_good else
                     f"no checkpoint was written before it in {ckpt.directory}")
            raise NonFiniteLossError(f"{e}. Training stopped; {where}") from None

    def save(step, epoch, batch_in_epoch, m):
        # never checkpoint a state whose step already went bad
        check(m["loss"], step, m.get("grad_norm"), None if "grad_norm" in m else state.params)
        if batch_in_epoch == steps_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
        ckpt.save(state, {"epoch": epoch, "batch": batch_in_epoch, "seed": seed, "batch_size": batch_size,
                          "steps_per_epoch": steps_per_epoch})
        last_good.append(step)

    prev_loss = None
    m = None
    t0 = time.perf_counter()
    stop = False
    step = start_step
    epoch, i = start_epoch, start_batch
    for epoch in range(start_epoch, epochs):
        skip = start_batch if epoch == start_epoch else 0
        # batches() fixes the order by (seed, epoch); a resumed epoch skips the batches already trained on.
        it = itertools.islice(batches(train, batch_size, seed=seed, epoch=epoch), skip, None)
        for i, batch in enumerate(prefetch(it), start=skip + 1):
            state, m = step_fn(state, batch)
            step += 1
            if step == start_step + 1:  # compile + first step: kept out of the throughput
                jax.block_until_ready(m["loss"])
                hist.first_step_seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
            if prev_loss is not None:
                check(*prev_loss)
            prev_loss = (m["loss"], step)
            for cb in callbacks:
                cb(step, state)
            if step % log_every == 0:
                hist.steps.append(step)
                hist.losses.append(float(m["loss"]))
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
            check(*prev_loss)
            hist.train_seconds += time.perf_counter() - t0
            stop = evaluate(step)
            t0 = time.perf_counter()
            if stop:
                break
    if prev_loss is not None:
        check(*prev_loss)
    if ckpt is not None and m is not None and last_good[-1:] != [step]:
        save(step, epoch, i, m)
    jax.block_until_ready(state.params)
    hist.train_seconds += time.perf_counter() - t0
    hist.train_samples = max(step - start_step - 1, 0) * batch_size
    bar.close()
    hist.stopped_early = stop
    if best_params is not None:
        state = state.replace(params=jax.tree_util.tree_map(jnp.asarray, best_params))
    return state, hist


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _check_finite(loss, step, what="training loss"):
    v = float(loss)
    if not math.isfinite(v):
        raise NonFiniteLossError(f"the {what} became {v} at step {step}; lower the learning rate or check "
                                 "the input for NaN/inf")
