"""The run store: one JSON row per training run of every experiment, in ``OUT/runs.jsonl``.

Every training run goes through :func:`ensure`: a row is keyed by the data and every resolved setting of
:class:`mlet_jax.train.RunConfig` (:func:`config_key`), so a run that two experiments share is trained once. A re-run
skips rows already there (resumable), and several processes may append to the same file (``--shard I/N``): each row
is a single ``O_APPEND`` write under an exclusive ``flock``, so lines never interleave. A line cut short by a crash
is ignored. Besides the test metrics, a row holds the PR-AUC on the most and least frequent test samples
(:mod:`experiments.subsets`) and any post-training evaluations asked for (INT8, rank-r SVD).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from experiments.common import load
from experiments.subsets import subset_metrics
from mlet_jax import compression as C
from mlet_jax.models import collapse_model
from mlet_jax.models.presets import paper_embedding
from mlet_jax.train import RunConfig
from mlet_jax.train import run as train_run
from mlet_jax.training import NonFiniteLossError, Trainer

RUNS = "runs.jsonl"

# -- rows on disk ---------------------------------------------------------------------------------------------------


def config_key(cfg: RunConfig, data_tag: str) -> str:
    """A stable id of (data, every resolved setting)."""
    blob = json.dumps({"data": data_tag, **cfg.resolved()}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def append_row(path: str, row: dict) -> None:
    """Append one JSON line atomically with respect to other appenders (O_APPEND + flock, one write)."""
    data = (json.dumps(row, default=_json_default, allow_nan=False) + "\n").encode()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_rows(path: str) -> list[dict]:
    """Every complete row of a JSONL file (a truncated or corrupt line is skipped)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON-serializable: {type(x)}")


# -- running ---------------------------------------------------------------------------------------------------------


def run_one(cfg: RunConfig, dataset, data_tag: str, evals: Sequence[str] = (), frac: float = 0.1) -> dict:
    """Train one configuration and return its row (metrics, frequency subsets, post-training evaluations).

    ``evals`` adds post-training evaluations of the collapsed model: ``"int8"`` (every embedding table INT8
    quantized) and ``"svd:R"`` (every embedding table truncated to rank R).
    """
    s = cfg.resolved()
    row = {"key": config_key(cfg, data_tag), "data": data_tag, "model": cfg.model, "embedding": cfg.embedding,
           "d": cfg.d, "k": cfg.k, "seed": cfg.seed, "table_lr_mult": cfg.table_lr_mult,
           "projection_std": s["projection_std"], "optimizer": s["optimizer"], "lr": s["lr"],
           "dataset_name": getattr(dataset, "name", cfg.dataset), "settings": s, "evals": {}, "time": time.time()}
    t0 = time.perf_counter()
    try:
        rec = train_run(cfg, dataset, keep_state=True)
    except NonFiniteLossError as e:
        row.update(diverged=True, error=str(e), test_auc=None, test_logloss=None, test_pr_auc=None, freq={},
                   evals={e: None for e in evals}, run_s=time.perf_counter() - t0)
        return row
    row.update(diverged=False, **{k: rec[k] for k in ("test_auc", "test_logloss", "test_pr_auc", "wall_s",
                                                      "train_samples_per_s", "params_train", "params_inference",
                                                      "embedding_params_inference", "steps")})
    row["vocab_sizes"] = list(rec["_dataset"].schema.vocab_sizes)
    row["freq"] = subset_metrics(rec["_dataset"], rec["_test_logits"], frac)
    for e in evals:
        row["evals"][e] = post_training_eval(rec, e)
    row["run_s"] = time.perf_counter() - t0
    return row


def post_training_eval(rec: dict, what: str) -> dict:
    """Test metrics of the collapsed model after INT8 quantization (``"int8"``) or rank truncation (``"svd:R"``)."""
    trainer, ds = rec["_trainer"], rec["_dataset"]
    vocab = ds.schema.vocab_sizes
    model, params = collapse_model(trainer.model, rec["_state"].params)
    if what == "int8":
        fn = lambda t: C.int8_roundtrip_fields(t, vocab)  # noqa: E731
    elif what.startswith("svd:"):
        r = int(what.split(":")[1])
        fn = lambda t: C.low_rank_fields(t, vocab, r)  # noqa: E731
    else:
        raise ValueError(f"unknown post-training evaluation {what!r}; use int8 or svd:R")
    new = C.map_embedding_tables(jax_to_numpy(params), fn)
    m = Trainer(model, trainer.config).evaluate(new, ds.test)
    return {"test_auc": m["auc"], "test_logloss": m["logloss"], "test_pr_auc": m["pr_auc"]}


def jax_to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def ensure(cfgs: Sequence[RunConfig], dataset_fn: Callable, path: str, data_tag: str, *, evals: Sequence[str] = (),
           frac: float = 0.1, shard: tuple[int, int] = (0, 1), train: bool = True, log=print) -> list[dict]:
    """Rows for ``cfgs`` from ``path``, training (and appending) the missing ones first.

    A row counts as done when its key matches and it holds every requested evaluation. ``dataset_fn()`` is called
    only if something must be trained. With ``shard=(i, n)`` this process trains only pending runs ``i, i+n, ...``
    (run ``n`` processes on one ``path``); rows of other shards are returned once they are in the file.
    """
    done = _latest(read_rows(path))
    todo = [c for c in cfgs if not _satisfies(done.get(config_key(c, data_tag)), evals)]
    todo = todo[shard[0]::shard[1]] if train else []
    ds = dataset_fn() if todo else None
    for i, c in enumerate(todo):
        row = run_one(c, ds, data_tag, evals, frac)
        append_row(path, row)
        auc = "diverged" if row["diverged"] else f"AUC {row['test_auc']:.4f}"
        log(f"[{i + 1}/{len(todo)}] {c.model} {c.embedding} d={c.d} k={c.k} seed={c.seed} "
            f"lr_mult={c.table_lr_mult} std={row['projection_std']}: {auc} ({row['run_s']:.1f}s)")
    done = _latest(read_rows(path))
    return [done[k] for k in (config_key(c, data_tag) for c in cfgs) if k in done]


def _latest(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        prev = out.get(r["key"])
        # keep the row with the most evaluations (a later run may add some)
        if prev is None or len(r.get("evals", {})) >= len(prev.get("evals", {})):
            out[r["key"]] = r
    return out


def _satisfies(row: dict | None, evals: Sequence[str]) -> bool:
    return row is not None and all(e in row.get("evals", {}) for e in evals)


def plan_ensure(plan, out: str, cfgs, *, evals=(), shard=(0, 1), train=True, log=print, dataset_fn=None,
                data_tag=None) -> list[dict]:
    return ensure(cfgs, dataset_fn or (lambda: load(plan)), os.path.join(out, RUNS), data_tag or plan.data_tag(),
                  evals=evals, frac=plan.frac, shard=shard, train=train, log=log)


def is_plain(r: dict) -> bool:
    """A row with default learning rate and projection std (the sweep's own runs, not a control or scan)."""
    std = paper_embedding(r["model"]).projection_std
    return (r["table_lr_mult"] == 1.0 and (r["k"] is None or abs(r["projection_std"] - std) < 1e-12)
            and not r.get("diverged"))
