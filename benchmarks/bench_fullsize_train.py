"""Train DLRM on a prepared full-size Criteo cache and time every phase (issue 16 item 3).

    python -m benchmarks.bench_fullsize_train --cache /work/big/criteo_cache --embedding single --steps 3000 \
        --out /work/big/fullsize_single.json

One process, one run: build and initialize the model over the cache's full tables, train ``--steps`` row-sparse
steps (or ``--epochs`` whole epochs) with the paper's optimizer (SGD 0.2; ``--optimizer adagrad`` for Adagrad 0.02),
evaluate on the test split (or its first ``--eval-rows``), save and restore a checkpoint, collapse, and export the
served model. The JSON record holds the wall time of each phase, training samples/s, the epoch time extrapolated
from it, the process's peak RSS after each phase, the state's and checkpoint's bytes, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks.bench_checkpoint import fingerprints
from benchmarks.common import machine
from mlet_jax import serving
from mlet_jax.checkpoint import Checkpointer
from mlet_jax.data import batches, load_dataset
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.io import write_json_output
from mlet_jax.models import collapse_model
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.runtime import reexec_with_tuned_malloc
from mlet_jax.training import TrainConfig, Trainer


def _progress(phase: str, wall: dict, rss: dict) -> None:
    print(f"{phase}: {wall[phase]:.1f} s, peak RSS {rss[phase]:,.0f} MiB", file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def tree_bytes(tree) -> int:
    return int(sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes
                   for x in jax.tree_util.tree_leaves(tree)))


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_fullsize_train", description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True, help="a prepared criteo cache (python -m mlet_jax.data prepare criteo)")
    p.add_argument("--embedding", choices=["single", "mlet"], default="single")
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--optimizer", choices=["sgd", "adagrad"], default="sgd")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=2000, help="training steps (ignored with --epochs)")
    p.add_argument("--epochs", type=int, default=None, help="whole epochs instead of --steps")
    p.add_argument("--eval-rows", type=int, default=None, help="evaluate on the first N test rows (default all)")
    p.add_argument("--workdir", default=None, help="for the checkpoint and export (default: a new temporary folder)")
    p.add_argument("--out", default=None, help="JSON record")
    a = p.parse_args(argv)
    if not os.path.isdir(a.cache):
        p.error(f"--cache {a.cache!r} is not a folder")
    if a.steps < 1 or a.batch_size < 1 or (a.epochs is not None and a.epochs < 1):
        p.error("--steps, --batch-size and --epochs must be >= 1")
    if a.embedding == "mlet" and a.k < a.d:
        p.error(f"--k must be >= --d, got {a.k} < {a.d}")
    work = a.workdir or tempfile.mkdtemp(prefix="fullsize-")
    if a.workdir and os.path.exists(a.workdir) and os.listdir(a.workdir):
        p.error(f"--workdir {a.workdir!r} is not empty")
    os.makedirs(work, exist_ok=True)

    rec: dict = {"cache": a.cache, "embedding": a.embedding, "d": a.d, "k": a.k if a.embedding == "mlet" else None,
                 "optimizer": a.optimizer, "batch_size": a.batch_size, "machine_start": machine()}
    rss: dict[str, float] = {}
    wall: dict[str, float] = {}

    t = time.perf_counter()
    ds = load_dataset("criteo", a.cache)
    wall["open_cache"], rss["open_cache"] = time.perf_counter() - t, peak_rss_mib()
    _progress("open_cache", wall, rss)
    vocab = ds.schema.vocab_sizes
    rec.update(train_rows=len(ds.train), test_rows=len(ds.test), table_rows=int(sum(vocab)),
               largest_table=int(max(vocab)))

    spec = EmbeddingSpec(a.embedding, dim=a.d, inner_dim=a.k if a.embedding == "mlet" else None,
                         table_init="uniform", projection_init="normal", projection_std=0.25)
    model = DLRM(vocab_sizes=vocab, num_dense=ds.schema.num_dense, embedding=spec)
    lr = 0.2 if a.optimizer == "sgd" else 0.02
    trainer = Trainer(model, TrainConfig(OptimizerSpec(a.optimizer, lr=lr)))
    it = batches(ds.train, a.batch_size, seed=0)
    first = next(it)
    t = time.perf_counter()
    state = trainer.init(0, first)
    jax.block_until_ready(state)
    wall["init"], rss["init"] = time.perf_counter() - t, peak_rss_mib()
    _progress("init", wall, rss)
    rec["state_bytes"] = tree_bytes(state)

    steps_per_epoch = len(ds.train) // a.batch_size
    n_steps = steps_per_epoch * a.epochs if a.epochs else a.steps
    t = time.perf_counter()
    state, m = trainer.train_step(state, first)
    jax.block_until_ready(m["loss"])
    wall["first_step"] = time.perf_counter() - t
    losses = [float(m["loss"])]
    t = time.perf_counter()
    done = 1
    for epoch in range(a.epochs or 1):
        src = it if epoch == 0 else batches(ds.train, a.batch_size, seed=0, epoch=epoch)
        for b in src:
            if done >= n_steps:
                break
            state, m = trainer.train_step(state, b)
            done += 1
            if done % 500 == 0:
                losses.append(float(m["loss"]))
    jax.block_until_ready(state)
    wall["train"], rss["train"] = time.perf_counter() - t, peak_rss_mib()
    _progress("train", wall, rss)
    rec.update(steps=done, samples_per_s=(done - 1) * a.batch_size / wall["train"], losses_every_500=losses,
               epoch_s_extrapolated=steps_per_epoch * a.batch_size / ((done - 1) * a.batch_size / wall["train"]))

    test = ds.test if a.eval_rows is None else ds.test.take(slice(0, a.eval_rows))
    t = time.perf_counter()
    rec["test"] = trainer.evaluate(state.params, test)
    wall["evaluate"], rss["evaluate"] = time.perf_counter() - t, peak_rss_mib()
    _progress("evaluate", wall, rss)
    rec["eval_rows"] = len(test)

    ckpt_dir = os.path.join(work, "ckpt")
    t = time.perf_counter()
    with Checkpointer(ckpt_dir) as ck:
        ck.save(state, {"epoch": 0, "batch": done})
    wall["checkpoint_save"], rss["checkpoint_save"] = time.perf_counter() - t, peak_rss_mib()
    _progress("checkpoint_save", wall, rss)
    rec["checkpoint_bytes"] = folder_bytes(ckpt_dir)

    t = time.perf_counter()
    served_model, served_params = collapse_model(trainer.model, state.params)
    jax.block_until_ready(served_params)
    wall["collapse"], rss["collapse"] = time.perf_counter() - t, peak_rss_mib()
    _progress("collapse", wall, rss)
    del served_model, served_params
    export_path = os.path.join(work, "model.mlet")
    t = time.perf_counter()
    serving.export(trainer.model, state.params, export_path, schema=ds.schema)
    wall["export"], rss["export"] = time.perf_counter() - t, peak_rss_mib()
    _progress("export", wall, rss)
    rec["export_bytes"] = folder_bytes(export_path) if os.path.isdir(export_path) else os.path.getsize(export_path)

    # Restore as a resumed run does: into the state's shapes only, with the trained state gone (so the peak is
    # that of a fresh process resuming, not of two states side by side); the restored leaves are compared with
    # the trained ones through float64 sums and sums of squares taken before.
    prints = fingerprints(state)
    abstract = jax.eval_shape(lambda s: s, state)
    del state
    t = time.perf_counter()
    with Checkpointer(ckpt_dir) as ck:
        restored, _ = ck.restore(abstract)
    jax.block_until_ready(restored)
    wall["checkpoint_restore"], rss["checkpoint_restore"] = time.perf_counter() - t, peak_rss_mib()
    _progress("checkpoint_restore", wall, rss)
    rec["restore_equal"] = fingerprints(restored) == prints
    del restored
    rec.update(wall_s=wall, peak_rss_mib_after=rss, machine_end=machine())
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)  # our own temporary folder
    print(json.dumps(rec, default=float))
    if a.out:
        write_json_output(a.out, rec, "mlet_jax.bench.fullsize_train/1", "--out")
    return rec


if __name__ == "__main__":
    reexec_with_tuned_malloc()
    main()
