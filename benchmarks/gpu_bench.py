"""GPU benchmark: device copy bandwidth and matmul rate, then DLRM training throughput at Criteo-Kaggle table sizes.

Part 1 measures what the device can do: the copy bandwidth of a 1 GiB buffer (read + write bytes per second) and
the dense matmul rate (8192^3 in float32 at JAX's default precision and in bfloat16). Part 2 trains DLRM (the paper's
Criteo MLPs) on the 26 Criteo-Kaggle vocabularies (33.8M rows) with d = 16, single-layer versus MLET k = 64, row-sparse
SGD (lr 0.2, the paper's DLRM setting), at several batch sizes, and reports samples/s next to the roofline floor of
the step: ``max(bytes moved / copy bandwidth, FLOPs / matmul rate)``, where bytes count the table rows gathered,
read and written back (3 x B x 26 x width x 4) plus reading and writing the dense parameters and their optimizer
state, and FLOPs count the MLPs, the MLET projection and the dot interaction, forward and backward (3 x forward).
The ratio measured/floor says how far the step is from the hardware limit. Ids are drawn per field from a Zipf law
(exponent 1.05), so batches repeat popular ids as real Criteo batches do.

Command (on a machine with one GPU; under 5 minutes on an H200, most of it compilation; the table is printed last)::

    python -m benchmarks.gpu_bench --out results/gpu_bench.json

CPU smoke mode (tiny tables, seconds; run by tests/test_gpu_bench.py)::

    python -m benchmarks.gpu_bench --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import best_of, describe, machine, timed
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer

CRITEO_KAGGLE_VOCAB = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                       5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
NUM_DENSE = 13


def copy_bandwidth(nbytes: int, reps: int = 10) -> float:
    """Bytes per second of a device-to-device copy (each byte read once and written once)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a * 1.0000001)  # not an identity, so XLA cannot elide it
    return 2 * x.size * 4 / best_of(f, x, reps=reps)


def matmul_rate(n: int, dtype, reps: int = 10) -> float:
    """FLOP/s of an ``n x n`` by ``n x n`` matmul."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    return 2 * n**3 / best_of(jax.jit(jnp.matmul), a, b, reps=reps)


def zipf_ids(vocab, batch: int, n_batches: int, seed: int = 0, exponent: float = 1.05) -> np.ndarray:
    """``[n_batches, batch, F]`` int32 ids, Zipf-distributed per field (rank r with probability ~ r^-exponent)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_batches, batch, len(vocab)), np.int32)
    for f, v in enumerate(vocab):
        # Inverse-CDF of the continuous power law on [1, v + 1): cheap for 10M-id fields.
        u = rng.random((n_batches, batch))
        a = 1.0 - exponent
        r = ((v + 1.0) ** a * u + (1.0 - u)) ** (1.0 / a)
        out[:, :, f] = np.minimum(r.astype(np.int64) - 1, v - 1)
    return out


def step_cost(model: DLRM, params, batch: int) -> tuple[float, float]:
    """``(bytes, flops)`` a row-sparse SGD step must move and compute at ``batch`` (see the module docstring)."""
    n_f, spec = len(model.vocab_sizes), model.embedding
    width = spec.width
    table_bytes = 3 * batch * n_f * width * 4
    dense = [x for p, x in jax.tree_util.tree_leaves_with_path(params) if "table" not in jax.tree_util.keystr(p)]
    dense_elems = sum(int(np.prod(x.shape)) for x in dense)
    dense_bytes = 3 * dense_elems * 4  # read params, write params, read the gradient (SGD: no optimizer state)
    mlp_macs = sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(params)
                   if jax.tree_util.keystr(p).endswith("['kernel']"))
    proj_macs = n_f * spec.inner_dim * spec.dim if spec.kind == "mlet" else 0
    inter_macs = (n_f + 1) ** 2 * spec.dim
    flops = 3 * 2 * batch * (mlp_macs + proj_macs + inter_macs)
    return float(table_bytes + dense_bytes), float(flops)


def train_throughput(vocab, kind: str, batch: int, steps: int, *, k: int = 64, d: int = 16, bottom=None,
                     top=None) -> dict:
    """Samples/s of jitted row-sparse DLRM steps, with compile time and peak device memory when known."""
    spec = EmbeddingSpec(kind=kind, dim=d, inner_dim=k if kind == "mlet" else None)
    kw = {} if bottom is None else {"bottom_mlp": bottom, "top_mlp": top}
    model = DLRM(vocab_sizes=tuple(vocab), num_dense=NUM_DENSE, embedding=spec, **kw)
    trainer = Trainer(model, TrainConfig(OptimizerSpec("sgd", lr=0.2), sparse_tables=True))
    n_b = 4
    ids = zipf_ids(vocab, batch, n_b)
    rng = np.random.default_rng(1)
    data = [jax.device_put({"dense": rng.standard_normal((batch, NUM_DENSE)).astype(np.float32), "ids": ids[i],
                            "label": (rng.random(batch) < 0.25).astype(np.float32)}) for i in range(n_b)]

    def run_steps(state, n):  # dispatched back to back, blocked once: the throughput of a training loop
        for i in range(n):
            state, m = trainer.train_step(state, data[i % n_b])
        return state, m

    state, init_s = timed(trainer.init, 0, data[0])
    (state, m), compile_s = timed(trainer.train_step, state, data[0])
    (state, m), _ = timed(run_steps, state, 2)  # warm steps, finished before the clock starts
    (state, m), sec = timed(run_steps, state, steps)
    sec /= steps
    nbytes, flops = step_cost(model, state.params, batch)
    uniq = np.mean([len(np.unique(ids[i] + np.cumsum((0,) + tuple(vocab[:-1]))[None, :])) for i in range(n_b)])
    loss = float(m["loss"])
    del state
    return {"kind": kind, "batch": batch, "rows": int(sum(vocab)), "step_ms": sec * 1e3, "samples_per_s": batch / sec,
            "bytes_per_step": nbytes, "flops_per_step": flops, "unique_rows_per_batch": float(uniq),
            "init_s": init_s, "compile_s": compile_s, "final_loss": loss}


def run(smoke: bool = False, batches=None, steps: int | None = None, budget_s: float = 240.0) -> dict:
    t_start = time.perf_counter()
    if smoke:
        vocab = tuple(max(2, v // 10_000) for v in CRITEO_KAGGLE_VOCAB)
        batches, steps = batches or (32, 64), steps or 3
        hw = {"copy_Bps": copy_bandwidth(1 << 22, reps=3), "matmul_f32": matmul_rate(128, jnp.float32, reps=3),
              "matmul_bf16": matmul_rate(128, jnp.bfloat16, reps=3)}
        mlps = {"bottom": (16, 8), "top": (16,)}
    else:
        vocab = CRITEO_KAGGLE_VOCAB
        batches, steps = batches or (2048, 8192, 32768), steps or 30
        hw = {"copy_Bps": copy_bandwidth(1 << 30), "matmul_f32": matmul_rate(8192, jnp.float32),
              "matmul_bf16": matmul_rate(8192, jnp.bfloat16)}
        mlps = {}
    where = machine()
    print(f"device: {describe(where)}")
    print(f"copy bandwidth {hw['copy_Bps'] / 1e9:.1f} GB/s, matmul f32 {hw['matmul_f32'] / 1e12:.1f} TFLOP/s, "
          f"bf16 {hw['matmul_bf16'] / 1e12:.1f} TFLOP/s", flush=True)
    rows = []
    for kind in ("single", "mlet"):
        for b in batches:
            if time.perf_counter() - t_start > budget_s:
                print(f"skipping {kind} batch {b}: past the {budget_s:.0f} s budget", flush=True)
                continue
            r = train_throughput(vocab, kind, b, steps, **mlps)
            # f32 at default precision is what the step runs (TF32 on NVIDIA GPUs where XLA chooses it).
            floor_s = max(r["bytes_per_step"] / hw["copy_Bps"], r["flops_per_step"] / hw["matmul_f32"])
            r["floor_samples_per_s"] = b / floor_s
            r["fraction_of_floor"] = r["samples_per_s"] / r["floor_samples_per_s"]
            r["bound"] = "memory" if r["bytes_per_step"] / hw["copy_Bps"] >= r["flops_per_step"] / hw["matmul_f32"] \
                else "compute"
            print(json.dumps(r), flush=True)
            rows.append(r)
    return {"device": where["device"], "machine": where, "hardware": hw, "vocab_rows": int(sum(vocab)),
            "smoke": smoke, "runs": rows, "total_s": time.perf_counter() - t_start}


def table(result: dict) -> str:
    lines = [f"device {result['device']}; copy {result['hardware']['copy_Bps'] / 1e9:.0f} GB/s, "
             f"matmul f32 {result['hardware']['matmul_f32'] / 1e12:.1f} TFLOP/s; {result['vocab_rows']:,} rows; "
             f"total {result['total_s']:.0f} s",
             "| embedding | batch | step (ms) | samples/s | floor samples/s | measured / floor | bound |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['kind']} | {r['batch']} | {r['step_ms']:.2f} | {r['samples_per_s']:,.0f} | "
                     f"{r['floor_samples_per_s']:,.0f} | {r['fraction_of_floor']:.1%} | {r['bound']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU check")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    p.add_argument("--budget-s", type=float, default=240.0, help="skip remaining configurations after this")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    if not a.smoke and jax.devices()[0].platform != "gpu":
        p.error(f"no GPU (devices: {jax.devices()}); use --smoke for the CPU check")
    result = run(a.smoke, a.batches, a.steps, a.budget_s)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, a.out)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
