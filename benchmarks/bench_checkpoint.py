"""Checkpoint save and restore of a DLRM train state at Criteo-Kaggle size: time and peak memory over the state.

    .venv/bin/python -m benchmarks.bench_checkpoint --scale 1 --embedding mlet --k 64 --optimizer sgd \
        --settings rows --workdir /work/big/ckbench --out F.json

For each setting (``rows``: :class:`mlet_jax.checkpoint.Checkpointer` as it is, arrays larger than
``ROW_BLOCK_BYTES`` on one device saved and restored in blocks of rows; ``whole``: ``ROW_BLOCK_BYTES`` raised so
that orbax moves every array whole, as before), three fresh processes run in turn, so each one's memory is its own:

- ``save``: initialize the state (DLRM over the 26 Criteo-Kaggle tables, 33,762,577 rows, each scaled by
  ``--scale``; uniform tables, so nothing compresses), save it;
- ``restore``: build only the state's shapes (``jax.eval_shape`` of the init) and restore into them, as a run that
  resumes in a fresh process does;
- ``beside``: initialize a state and restore into it while it is alive (what ``fit(checkpoint_dir=...)`` did
  before it restored into shapes only).

Memory is the process's resident set (``VmRSS``, sampled every 2 ms by a thread) during the phase, above its
resident set just before it; ``peak / state`` divides that by the state's bytes. Restored states are compared with
the saved one leaf by leaf (float64 sum and sum of squares of every leaf, taken at save). Settings alternate within
each round (``--rounds``), so load drift hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

from benchmarks.bench_init_memory import CRITEO_KAGGLE, _rss_mib
from benchmarks.common import machine

SETTINGS = {"whole": 1 << 62, "rows": None}  # ROW_BLOCK_BYTES: orbax moves every array whole / the default


class _PeakRSS:
    """The largest ``VmRSS`` seen while the ``with`` block runs (sampled every 2 ms), and the one before it."""

    def __enter__(self):
        self.before = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())

    @property
    def extra(self) -> float:
        return self.peak - self.before


def _vocab(scale: float) -> tuple[int, ...]:
    return tuple(max(2, int(round(v * scale))) for v in CRITEO_KAGGLE)


def _trainer(a):
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models.dlrm import DLRM
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer

    spec = EmbeddingSpec(a.embedding, dim=a.d, inner_dim=a.k if a.embedding == "mlet" else None,
                         table_init="uniform")
    lr = 0.2 if a.optimizer == "sgd" else 0.02
    return Trainer(DLRM(vocab_sizes=_vocab(a.scale), num_dense=13, embedding=spec),
                   TrainConfig(OptimizerSpec(a.optimizer, lr=lr)))


def _batch(n_fields: int) -> dict:
    import numpy as np

    return {"dense": np.zeros((1, 13), np.float32), "ids": np.zeros((1, n_fields), np.int32),
            "label": np.zeros(1, np.float32)}


def fingerprints(state) -> list[list[float]]:
    """Per parameter and optimizer leaf: its float64 sum and sum of squares (equal leaves give equal pairs)."""
    import jax
    import numpy as np

    def sums(x):  # in float64, 4M elements at a time: a float64 copy of a whole table would double the state
        flat, total, squares = np.asarray(x).reshape(-1), 0.0, 0.0
        for i in range(0, flat.size, 1 << 22):
            block = flat[i:i + (1 << 22)].astype(np.float64)
            total, squares = total + float(block.sum()), squares + float(block @ block)
        return [total, squares]

    return [sums(x) for x in jax.tree_util.tree_leaves((state.params, state.opt_state, state.table_opt_state))]


def _child(a) -> dict:
    import jax

    import mlet_jax.checkpoint as checkpoint
    from mlet_jax.checkpoint import Checkpointer

    if SETTINGS[a.setting] is not None:
        checkpoint.ROW_BLOCK_BYTES = SETTINGS[a.setting]
    tr = _trainer(a)
    b = _batch(len(CRITEO_KAGGLE))
    ck_dir = os.path.join(a.dir, "ckpt")
    rec: dict = {"phase": a.child, "setting": a.setting, "row_block_bytes": checkpoint.ROW_BLOCK_BYTES}
    if a.child in ("save", "beside"):
        t = time.perf_counter()
        state = tr.init(0, b)
        jax.block_until_ready(state)
        rec["init_s"] = time.perf_counter() - t
        rec["state_bytes"] = int(sum(x.nbytes for x in jax.tree_util.tree_leaves(
            state.replace(rng=jax.random.key_data(state.rng)))))
    if a.child == "save":
        prints = fingerprints(state)
        with Checkpointer(ck_dir) as ck, _PeakRSS() as m:
            t = time.perf_counter()
            ck.save(state, {"epoch": 0, "batch": 0})
            rec["s"] = time.perf_counter() - t
        with open(os.path.join(a.dir, "prints.json"), "w") as f:
            json.dump(prints, f)
        rec["checkpoint_bytes"] = sum(os.path.getsize(os.path.join(d, x)) for d, _, fs in os.walk(ck_dir)
                                      for x in fs)
    else:
        target = state if a.child == "beside" else jax.eval_shape(lambda: tr.init(0, b))
        with Checkpointer(ck_dir) as ck, _PeakRSS() as m:
            t = time.perf_counter()
            restored, _ = ck.restore(target)
            jax.block_until_ready(restored)
            rec["s"] = time.perf_counter() - t
        with open(os.path.join(a.dir, "prints.json")) as f:
            rec["equal"] = fingerprints(restored) == json.load(f)
    rec.update(rss_before_mib=m.before, peak_mib=m.peak, extra_mib=m.extra)
    return rec


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_checkpoint", description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0,
                   help="each Criteo-Kaggle table's rows times this (1: 33.8M rows in all)")
    p.add_argument("--embedding", choices=["single", "mlet"], default="mlet")
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--optimizer", choices=["sgd", "adagrad"], default="sgd")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                   help="rows: the checkpointer as it is; whole: every array moved whole by orbax (as before)")
    p.add_argument("--phases", nargs="+", choices=["restore", "beside"], default=["restore", "beside"],
                   help="restore phases after each save")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workdir", required=True, help="an empty or missing folder for the checkpoints")
    p.add_argument("--out", default=None, help="JSON record")
    p.add_argument("--child", choices=["save", "restore", "beside"], help=argparse.SUPPRESS)
    p.add_argument("--setting", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print("RESULT" + json.dumps(_child(a)), flush=True)
        return []
    if not 0 < a.scale <= 1:
        p.error(f"--scale must be in (0, 1], got {a.scale}")
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    if a.embedding == "mlet" and a.k < a.d:
        p.error(f"--k must be >= --d, got {a.k} < {a.d}")
    if os.path.exists(a.workdir) and os.listdir(a.workdir):
        p.error(f"--workdir {a.workdir!r} is not empty")
    if a.out:
        from mlet_jax.io import check_output_file

        check_output_file(a.out, "--out")
    os.makedirs(a.workdir, exist_ok=True)
    common = ["--scale", str(a.scale), "--embedding", a.embedding, "--d", str(a.d), "--k", str(a.k),
              "--optimizer", a.optimizer, "--workdir", a.workdir]
    records = []
    start = machine()
    for r in range(a.rounds):
        for s in a.settings:
            d = os.path.join(a.workdir, f"{s}-{r}")
            os.makedirs(d)
            for phase in ["save", *a.phases]:
                cmd = [sys.executable, "-m", "benchmarks.bench_checkpoint", *common, "--child", phase,
                       "--setting", s, "--dir", d]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if out.returncode:
                    sys.exit(f"{phase} ({s}, round {r}) failed with exit status {out.returncode} (-9: killed, as by the"
                             f" kernel when memory ran out):\n{out.stderr[-4000:]}")
                rec = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))[6:])
                rec["round"] = r
                records.append(rec)
                state = next(x["state_bytes"] for x in records if x["setting"] == s and "state_bytes" in x)
                print(f"round {r} {s:>6} {phase:>7}: {rec['s']:6.1f} s, +{rec['extra_mib']:8,.0f} MiB "
                      f"({rec['extra_mib'] * 2**20 / state:.2f}x the state's {state / 1e9:.2f} GB)"
                      + (f", equal {rec['equal']}" if "equal" in rec else ""), file=sys.stderr, flush=True)
            shutil.rmtree(d)  # our own checkpoint of this round
    result = {"scale": a.scale, "table_rows": sum(_vocab(a.scale)), "embedding": a.embedding,
              "k": a.k if a.embedding == "mlet" else None, "optimizer": a.optimizer, "records": records,
              "machine_start": start, "machine_end": machine()}
    if a.out:
        from mlet_jax.io import write_json_output

        write_json_output(a.out, result, "mlet_jax.bench.checkpoint/1", "--out")
    return records


if __name__ == "__main__":
    main()
