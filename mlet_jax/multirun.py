"""Many training runs in one compiled program: seeds and per-run learning rates, vmapped over stacked train states.

    python -m mlet_jax.train --model deepfm --embedding mlet --d 16 --k 64 --seeds 0-7 --out runs.jsonl

:class:`MultiTrainer` trains ``S`` runs of one model at once: every leaf of the :class:`~mlet_jax.training.TrainState`
gets a leading run axis, and one jitted step (state donated) is ``jax.vmap`` of the single-run step
(:meth:`mlet_jax.training.Trainer._step`, so the torch-exact optimizers of :mod:`mlet_jax.optim` and the row-sparse
update of :mod:`mlet_jax.row_sparse` are the very same code). What differs between runs (:class:`Runs`):

* the seed: parameter init and dropout (each run's key is ``jax.random.key(seed)``, split as ``Trainer.init`` does);
* the learning rate and the tables' learning-rate multiplier: traced per-run values, arguments of the compiled
  step, so another sweep of the same size reuses the compiled step;
* the MLET projection's init std: an argument of the compiled init (the projection starts N(0, 1), times each run's
  std, which is exactly ``std * normal`` as the single-run init computes it).

Every run sees the same batches (``data_seed`` fixes their order), so the row-sparse dedup scratch is shared: the
batch's distinct rows are found once per step, not once per run, and the spill chunks a batch fills are one count
for all runs.
Each run equals its own sequential run (``Trainer`` + ``train_step`` with the same settings, on the same batches)
within 1e-6 in float32 and 1e-12 in float64 (``tests/test_multirun.py``). :func:`run_many` is the multi-run
:func:`mlet_jax.train.run`: one record per run, with the single-run record's fields. BENCHMARKS.md ("Many runs in one
program") times it against sequential runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mlet_jax import metrics as metrics_lib
from mlet_jax.data.base import Split, batches
from mlet_jax.data.registry import load_dataset
from mlet_jax.embeddings import count_params
from mlet_jax.io import atomic_write_text
from mlet_jax.models import build_model, collapse_model
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer, TrainState, _fresh_state, prefetch

MAX_SEED = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Runs:
    """What differs between the runs of one program: one entry per run in each given tuple.

    Attributes:
        seeds: parameter init and dropout of each run (0 <= seed < 2**31).
        lr: the (dense) optimizer's learning rate of each run; ``None``: the config's.
        table_lr_mult: the tables' learning rate is ``lr * table_lr_mult`` (the fair control for MLET claims);
            ``None``: 1.0, or the config's table optimizer when neither ``lr`` nor ``table_lr_mult`` is given.
        projection_std: MLET projection init std of each run (``projection_init="normal"`` only); ``None``: the
            model's.
    """

    seeds: tuple[int, ...]
    lr: tuple[float, ...] | None = None
    table_lr_mult: tuple[float, ...] | None = None
    projection_std: tuple[float, ...] | None = None

    def __post_init__(self):
        for name in ("seeds", "lr", "table_lr_mult", "projection_std"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(v))
        if not self.seeds:
            raise ValueError("seeds: give at least one run")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int | np.integer) or not 0 <= s <= MAX_SEED:
                raise ValueError(f"seeds must be integers in [0, {MAX_SEED}], got {s!r}")
        for name, low_ok in (("lr", False), ("table_lr_mult", False), ("projection_std", True)):
            v = getattr(self, name)
            if v is None:
                continue
            if len(v) != len(self.seeds):
                raise ValueError(f"{name} has {len(v)} entries but there are {len(self.seeds)} seeds")
            for x in v:
                if not (math.isfinite(x) and (x >= 0 if low_ok else x > 0)):
                    raise ValueError(f"{name} entries must be finite and {'>= 0' if low_ok else '> 0'}, got {x!r}")

    @property
    def size(self) -> int:
        return len(self.seeds)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-7"`` -> ``(0, ..., 7)``; ``"0,3,5"``; ranges and lists mix (``"0-3,9"``). No repeats, no negatives."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seeds like 0-7 or 0,3,5, got {text!r}") from None
        if not (lo.strip() == lo and hi.strip() == hi) or a > b:
            raise argparse.ArgumentTypeError(f"expected seeds like 0-7 or 0,3,5 (ranges ascending), got {text!r}")
        out.extend(range(a, b + 1))
    if any(s < 0 or s > MAX_SEED for s in out):
        raise argparse.ArgumentTypeError(f"seeds must be in [0, {MAX_SEED}], got {text!r}")
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"seeds repeat in {text!r}: the runs would be identical")
    return tuple(out)


def _traced_lr(spec: OptimizerSpec, lr) -> OptimizerSpec:
    """``spec`` with a traced learning rate. ``OptimizerSpec`` checks its lr with Python comparisons, which a tracer
    cannot answer, so the copy skips ``__post_init__``; :class:`Runs` and :class:`MultiTrainer` checked every run's
    concrete lr through ``OptimizerSpec`` first."""
    out = copy.copy(spec)
    object.__setattr__(out, "lr", lr)
    return out


@dataclasses.dataclass(frozen=True)
class _Program:
    """The static part of a multi-run step (hashable; the per-run values are arguments)."""

    model: Any
    config: TrainConfig
    n_runs: int
    scale_projection: bool

    @property
    def trainer(self) -> Trainer:
        return Trainer(self.model, self.config)


def state_axes() -> TrainState:
    """``vmap`` axes of a multi-run state: the run axis 0 everywhere but the dedup scratch, which runs share."""
    return TrainState(step=0, params=0, opt_state=0, table_opt_state=0, dedup=None, rng=0)


@dataclasses.dataclass(frozen=True)
class MultiTrainer:
    """``runs.size`` training runs of one model and update rule as one jitted, vmapped program (one device).

    Attributes:
        model: a CTR model (:class:`mlet_jax.models.base.CTRModel`).
        config: the update rule shared by the runs (its learning rates are the defaults of :class:`Runs`).
        runs: what differs between runs.

    The state is a :class:`~mlet_jax.training.TrainState` whose leaves carry a leading run axis, except ``dedup``
    (one scratch for all runs: they see the same batch). :meth:`run_state` takes one run's single-run state out.
    """

    model: Any
    config: TrainConfig = TrainConfig()
    runs: Runs = Runs((0,))

    def __post_init__(self):
        r, cfg = self.runs, self.config
        if r.projection_std is not None:
            emb = self.model.embedding
            if emb.kind != "mlet" or emb.projection_init != "normal":
                raise ValueError("projection_std per run needs MLET embeddings with projection_init='normal' (got "
                                 f"kind={emb.kind!r}, projection_init={emb.projection_init!r})")
        if r.lr is not None and r.table_lr_mult is None and cfg.table_optimizer is not None:
            raise ValueError("per-run lr with a separate table_optimizer: give table_lr_mult too (the tables' "
                             "learning rate is lr * table_lr_mult)")
        lr, table_lr = self.learning_rates()
        for a, b in zip(lr, table_lr, strict=True):  # OptimizerSpec's own checks on every run's concrete values
            dataclasses.replace(cfg.optimizer, lr=float(a))
            dataclasses.replace(cfg.tables, lr=float(b))

    @property
    def program(self) -> _Program:
        model = self.model
        if self.runs.projection_std is not None:  # init N(0, 1), scaled by each run's std (std * normal, exactly)
            model = model.clone(embedding=dataclasses.replace(model.embedding, projection_std=1.0))
        # the step replaces both learning rates by its traced arguments: a neutral 1.0 in the static config lets
        # every sweep of the same model, update rule and size share one compiled step
        cfg = self.config
        cfg = dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, lr=1.0),
                                  table_optimizer=dataclasses.replace(cfg.tables, lr=1.0))
        return _Program(model, cfg, self.runs.size, self.runs.projection_std is not None)

    @property
    def trainer(self) -> Trainer:
        """The single-run trainer of the model (evaluation, collapse, :meth:`run_state`'s consumer)."""
        return Trainer(self.model, self.config)

    def learning_rates(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 ``(lr_S, table_lr_S)``: each run's dense and table learning rate."""
        r, cfg = self.runs, self.config
        lr = np.asarray(r.lr if r.lr is not None else [cfg.optimizer.lr] * r.size, np.float64)
        if r.lr is None and r.table_lr_mult is None:
            table = np.full(r.size, cfg.tables.lr, np.float64)
        else:  # as OptimizerSpec.scaled: lr * mult in Python floats
            mult = r.table_lr_mult if r.table_lr_mult is not None else [1.0] * r.size
            table = np.asarray([float(a) * float(m) for a, m in zip(lr, mult, strict=True)], np.float64)
        return lr, table

    def hyperparameters(self) -> dict[str, jax.Array]:
        """The per-run values the compiled step takes, in the parameters' dtype (as a Python-float lr would be)."""
        dtype = jnp.dtype(self.model.param_dtype)
        lr, table = self.learning_rates()
        std = self.runs.projection_std if self.runs.projection_std is not None else [1.0] * self.runs.size
        return {"lr": jnp.asarray(lr, dtype), "table_lr": jnp.asarray(table, dtype),
                "projection_std": jnp.asarray(np.asarray(std, np.float64), dtype)}

    # -- construction and steps ---------------------------------------------------------------------------------
    def init(self, batch: dict) -> TrainState:
        """The stacked fresh states of every run (``batch``: any batch; only its shapes matter)."""
        dense, ids = jnp.asarray(np.asarray(batch["dense"])[:1]), jnp.asarray(np.asarray(batch["ids"])[:1])
        seeds = jnp.asarray(np.asarray(self.runs.seeds, np.int64))
        return _init_many(self.program, seeds, self.hyperparameters()["projection_std"], dense, ids)

    @functools.cached_property
    def train_step(self) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
        """Jitted ``(state, batch) -> (state, metrics)`` for all runs at once (metrics ``[S]``; state donated)."""
        prog, hp = self.program, self.hyperparameters()
        return lambda state, batch: _step_many(prog, state, hp["lr"], hp["table_lr"], batch)

    def run_state(self, state: TrainState, i: int) -> TrainState:
        """Run ``i``'s single-run state (usable with :attr:`trainer`; its dedup scratch is the shared one)."""
        take = functools.partial(jax.tree_util.tree_map, lambda x: x[i])
        return TrainState(step=take(state.step), params=take(state.params), opt_state=take(state.opt_state),
                          table_opt_state=take(state.table_opt_state), dedup=state.dedup, rng=take(state.rng))

    # -- evaluation ---------------------------------------------------------------------------------------------
    def predict(self, params, split: Split, batch_size: int = 8192) -> np.ndarray:
        """Logits ``[S, len(split)]`` of every run (the last batch padded, as :meth:`Trainer.predict`)."""
        n = len(split)
        out = np.empty((self.runs.size, n), np.float32)
        bs = min(batch_size, max(n, 1))
        prog = self.program
        for lo in range(0, n, bs):
            hi = min(n, lo + bs)
            idx = np.minimum(np.arange(lo, lo + bs), hi - 1)
            batch = {"dense": jnp.asarray(np.asarray(split.dense[idx], np.float32)),
                     "ids": jnp.asarray(np.asarray(split.ids[idx], np.int32))}
            out[:, lo:hi] = np.asarray(_eval_many(prog, params, batch))[:, : hi - lo]
        return out

    def evaluate(self, params, split: Split, batch_size: int = 8192) -> list[dict[str, float]]:
        """AUC, LogLoss and PR-AUC of every run on a split (NaN for a run whose logits are not finite)."""
        logits = self.predict(params, split, batch_size)
        return [_metrics(split.label, lg) for lg in logits]


def _metrics(labels, logits) -> dict[str, float]:
    if not np.all(np.isfinite(logits)):
        return {"auc": math.nan, "logloss": math.nan, "pr_auc": math.nan}
    return metrics_lib.binary_metrics(np.asarray(labels), logits)


def _scaled_projection(prog: _Program, params, std):
    flat = traverse_util.flatten_dict(params)
    for p in prog.model.embedding_stage().table_paths:
        q = p[:-1] + ("projection",)
        if q in flat:
            flat[q] = std.astype(flat[q].dtype) * flat[q]
    return traverse_util.unflatten_dict(flat)


@functools.partial(jax.jit, static_argnums=0)
def _init_many(prog: _Program, seeds_S, std_S, dense, ids) -> TrainState:
    trainer = prog.trainer

    def one(seed, std):
        key, rng = jax.random.split(jax.random.key(seed))  # as Trainer.init(seed, ...)
        params = prog.model.init(key, dense, ids)["params"]
        if prog.scale_projection:
            params = _scaled_projection(prog, params, std)
        return _fresh_state(trainer, params, rng)

    return jax.vmap(one, out_axes=state_axes())(seeds_S, std_S)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _step_many(prog: _Program, state: TrainState, lr_S, table_lr_S, batch: dict):
    def one(st, lr, table_lr):
        cfg = dataclasses.replace(prog.config, optimizer=_traced_lr(prog.config.optimizer, lr),
                                  table_optimizer=_traced_lr(prog.config.tables, table_lr))
        return Trainer(prog.model, cfg)._step(st, batch)

    return jax.vmap(one, in_axes=(state_axes(), 0, 0), out_axes=(state_axes(), 0))(state, lr_S, table_lr_S)


@functools.partial(jax.jit, static_argnums=0)
def _eval_many(prog: _Program, params, batch):
    return jax.vmap(lambda p: prog.model.apply({"params": p}, batch["dense"], batch["ids"]))(params)


# -- the loop ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MultiHistory:
    """What :func:`fit_many` measured; per-run values are lists of ``S`` entries."""

    steps: list[int] = dataclasses.field(default_factory=list)
    losses: list[list[float]] = dataclasses.field(default_factory=list)  # [logged step][run]
    evals: list[dict] = dataclasses.field(default_factory=list)  # {"step", "runs": [metrics per run]}
    train_seconds: float = 0.0
    train_samples: int = 0  # per run
    first_step_seconds: float = 0.0
    diverged_at: list[int | None] = dataclasses.field(default_factory=list)  # first non-finite loss step per run

    @property
    def samples_per_second(self) -> float:
        """Each run's training throughput after the first (compiling) step (the program's is ``S`` times it)."""
        return self.train_samples / self.train_seconds if self.train_seconds else float("nan")


def fit_many(mt: MultiTrainer, train: Split, *, batch_size: int = 256, epochs: int = 1, data_seed: int = 0,
             valid: Split | None = None, eval_every: int | None = None, state: TrainState | None = None,
             callbacks: Sequence[Callable[[int, TrainState], None]] = (), progress: bool = True,
             log_every: int = 50) -> tuple[TrainState, MultiHistory]:
    """Train every run of ``mt`` for ``epochs`` passes over ``train``, all on the same batches.

    As :func:`mlet_jax.training.fit` with ``seed=data_seed`` for the batch order (the runs' own seeds set init and
    dropout): the last partial batch is dropped, ``valid`` is evaluated every ``eval_every`` steps and at the end of
    each epoch. A run whose loss becomes NaN or infinite does not stop the others: its first such step is recorded
    in ``history.diverged_at`` (its metrics are then NaN). Checkpoints, early stopping and meshes are single-run
    features (:func:`mlet_jax.training.fit`).
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size} and {epochs}")
    if len(train) < batch_size:
        raise ValueError(f"the training split has {len(train)} rows, fewer than one batch of {batch_size}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    steps_per_epoch = len(train) // batch_size
    if state is None:
        state = mt.init(next(batches(train, 1, seed=data_seed)))
    hist = MultiHistory(diverged_at=[None] * mt.runs.size)
    step_fn = mt.train_step
    bar = tqdm(total=steps_per_epoch * epochs, disable=not progress, desc=f"train x{mt.runs.size}", unit="step",
               leave=False)

    def judge(loss_S, step):  # a finished step's losses, one step late, so the host never waits on the step
        for i, v in enumerate(np.asarray(loss_S, np.float64)):
            if hist.diverged_at[i] is None and not math.isfinite(v):
                hist.diverged_at[i] = step

    def evaluate(step):
        hist.evals.append({"step": step, "runs": mt.evaluate(state.params, valid)})

    start = int(np.asarray(state.step)[0])
    step, prev, m = start, None, None
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for batch in prefetch(batches(train, batch_size, seed=data_seed, epoch=epoch)):
            state, m = step_fn(state, batch)
            step += 1
            if step == start + 1:  # compile + first step: kept out of the throughput
                jax.block_until_ready(m["loss"])
                hist.first_step_seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
            if prev is not None:
                judge(*prev)
            prev = (m["loss"], step)
            for cb in callbacks:
                cb(step, state)
            if step % log_every == 0:
                hist.steps.append(step)
                hist.losses.append([float(x) for x in np.asarray(m["loss"])])
            bar.update(1)
            if valid is not None and eval_every and step % eval_every == 0:
                hist.train_seconds += time.perf_counter() - t0
                evaluate(step)
                t0 = time.perf_counter()
        if valid is not None and not eval_every:
            hist.train_seconds += time.perf_counter() - t0
            evaluate(step)
            t0 = time.perf_counter()
    if prev is not None:
        judge(*prev)
    jax.block_until_ready(state.params)
    hist.train_seconds += time.perf_counter() - t0
    hist.train_samples = max(step - start - 1, 0) * batch_size
    bar.close()
    return state, hist


# -- many RunConfigs in one program -------------------------------------------------------------------------------

# RunConfig fields a multi-run program lets differ between runs; every other setting must be the same.
PER_RUN = ("seed", "lr", "table_lr_mult", "projection_std")
UNSUPPORTED = {"mesh": "--mesh", "checkpoint_dir": "--checkpoint-dir", "checkpoint_every": "--checkpoint-every",
               "early_stopping_patience": "--early-stopping", "export": "--export"}


def check_configs(cfgs: Sequence) -> None:
    """Raise ``ValueError`` unless ``cfgs`` (:class:`mlet_jax.train.RunConfig`) can train as one program."""
    if not cfgs:
        raise ValueError("give at least one run")
    for name, flag in UNSUPPORTED.items():
        if any(getattr(c, name, None) is not None for c in cfgs):
            raise ValueError(f"{flag} is a single-run setting; several runs in one program do not support it")
    neutral = {"seed": 0, "lr": None, "table_lr_mult": 1.0, "projection_std": None}
    base = dataclasses.replace(cfgs[0], **neutral)
    for c in cfgs[1:]:
        other = dataclasses.replace(c, **neutral)
        if other != base:
            diff = [f.name for f in dataclasses.fields(base) if getattr(base, f.name) != getattr(other, f.name)]
            raise ValueError(f"runs of one program may differ only in {PER_RUN}; these differ: {diff}")


def multi_trainer(cfgs: Sequence, schema) -> MultiTrainer:
    """The :class:`MultiTrainer` of ``cfgs`` (checked by :func:`check_configs`) for a dataset ``schema``."""
    check_configs(cfgs)
    c0 = cfgs[0]
    model = build_model(c0.model, schema, c0.embedding_spec, **dict(c0.model_options))
    stds = [c.embedding_spec.projection_std for c in cfgs]
    vary_std = c0.embedding == "mlet" and len(set(stds)) > 1
    runs = Runs(seeds=tuple(c.seed for c in cfgs), lr=tuple(c.optimizer_spec.lr for c in cfgs),
                table_lr_mult=tuple(float(c.table_lr_mult) for c in cfgs),
                projection_std=tuple(stds) if vary_std else None)
    return MultiTrainer(model, c0.train_config, runs)


def run_many(cfgs: Sequence, dataset=None, *, progress: bool = False, keep_state: bool = False,
             log_every: int = 50) -> list[dict]:
    """Train and evaluate ``cfgs`` (:class:`mlet_jax.train.RunConfig`) as one program: one record per run.

    The runs may differ only in seed, ``lr``, ``table_lr_mult`` and ``projection_std``; they all train on the first
    config's batch order (``data_seed`` = ``cfgs[0].seed``), so the first run equals ``mlet_jax.train.run(cfgs[0])``.
    Each record has the fields of :func:`mlet_jax.train.run`'s, plus ``"multirun"`` (runs, index, data seed, the
    program's samples/s) and ``"diverged_at_step"``. With ``keep_state`` the records also hold ``"_state"`` (that
    run's single-run state), ``"_trainer"`` and ``"_dataset"``.
    """
    check_configs(cfgs)
    c0 = cfgs[0]
    ds = dataset if dataset is not None else load_dataset(c0.dataset, c0.data_dir, **dict(c0.data_options))
    mt = multi_trainer(cfgs, ds.schema)
    t0 = time.perf_counter()
    state, hist = fit_many(mt, ds.train, batch_size=c0.batch_size, epochs=c0.epochs, data_seed=c0.seed,
                           valid=ds.valid, eval_every=c0.eval_every, progress=progress, log_every=log_every)
    wall = time.perf_counter() - t0
    logits_SxN = mt.predict(state.params, ds.test, c0.eval_batch_size)
    trainer = mt.trainer
    machine = {"platform": platform.platform(), "backend": jax.default_backend(), "devices": len(jax.devices()),
               "processes": jax.process_count(), "mesh": None, "cpus": os.cpu_count(), "jax": jax.__version__}
    out = []
    for i, cfg in enumerate(cfgs):
        st = mt.run_state(state, i)
        logits = logits_SxN[i]
        test = _metrics(ds.test.label, logits)
        served_model, served_params = collapse_model(trainer.model, st.params)
        rec: dict[str, Any] = {
            "test_auc": test["auc"], "test_logloss": test["logloss"], "test_pr_auc": test["pr_auc"],
            "valid": {"step": hist.evals[-1]["step"], **hist.evals[-1]["runs"][i]} if hist.evals else None,
            "train_samples_per_s": hist.samples_per_second,
            "first_step_s": hist.first_step_seconds,
            "wall_s": wall,
            "params_train": count_params(st.params),
            "params_inference": count_params(served_params),
            "embedding_params_inference": ds.schema.total_rows * cfg.d,
            "steps": int(st.step),
            "final_loss": hist.losses[-1][i] if hist.losses else None,
            "settings": cfg.resolved(),
            "dataset_meta": {k: v for k, v in ds.meta.items() if not isinstance(v, np.ndarray)},
            "machine": machine,
            "multirun": {"runs": len(cfgs), "index": i, "data_seed": c0.seed,
                         "program_samples_per_s": hist.samples_per_second * len(cfgs)},
            "diverged_at_step": hist.diverged_at[i],
        }
        if cfg.embedding == "mlet":
            n = min(len(ds.test), 4096)
            served = Trainer(served_model, cfg.train_config).predict(served_params, ds.test.take(slice(0, n)))
            rec["collapse_max_abs_diff"] = float(np.max(np.abs(served - logits[:n])))
        if keep_state:
            rec.update(_state=st, _trainer=trainer, _dataset=ds, _test_logits=logits)
        out.append(rec)
    return out


# -- the command line (python -m mlet_jax.train ... --seeds LIST) ------------------------------------------------

_SINGLE_RUN_FLAGS = {"mesh": "--mesh", "checkpoint_dir": "--checkpoint-dir", "checkpoint_every": "--checkpoint-every",
                     "early_stopping_patience": "--early-stopping", "coordinator_address": "--coordinator-address",
                     "num_processes": "--num-processes", "process_id": "--process-id", "export": "--export",
                     "log": "--log", "spectra_every": "--spectra-every"}


def cli(p: argparse.ArgumentParser, args: argparse.Namespace, cfg, argv: Sequence[str],
        result_format: str) -> list[dict]:
    """``--seeds`` of :func:`mlet_jax.train.main`: refuse single-run options (usage errors), train every seed in one
    program, print and write (``--out``) one JSON line per run, tagged ``"format": result_format`` (the single-run
    record's)."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    if "--seed" in given:
        p.error("--seed and --seeds: give the seeds in --seeds only (the first one also orders the batches)")
    for name, flag in _SINGLE_RUN_FLAGS.items():
        if getattr(args, name, None) is not None:
            p.error(f"{flag} is not supported with --seeds (runs in one vmapped program train on one device, "
                    "without checkpoints or early stopping); train those runs one by one")
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        p.error("--seeds trains in one process; JAX_COORDINATOR_ADDRESS asks for several")
    # main() has checked --out (missing, or a file of ours: mlet_jax.io) before this point
    cfgs = [dataclasses.replace(cfg, seed=s) for s in args.seeds]
    recs = run_many(cfgs, progress=not args.no_progress, log_every=getattr(args, "log_every", 50))
    text = "".join(json.dumps({"format": result_format, **r}, default=float) + "\n" for r in recs)
    if args.out:
        atomic_write_text(args.out, text)
    print(text, end="")
    return recs
