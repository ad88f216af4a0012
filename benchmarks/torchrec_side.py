"""The torch side of :mod:`benchmarks.bench_torchrec`: TorchRec's DLRM and FBGEMM's table-batched embedding on CPU.

Run by ``bench_torchrec`` under the TorchRec venv's interpreter (the peer bench's ``setup_torchrec.sh``: torch
2.13.0 CPU, fbgemm-gpu-cpu 1.8.0, torchrec 1.8.0), never by hand in mlet_jax's venv (it imports nothing of
mlet_jax). Adapted from the peer bench's ``trec_dlrm.py``: 26 tables at the vocabularies of the ``.npz`` the caller
wrote, d 16, its MLPs (bottom 512-256-128-16 from 13 dense, top 512-256-1), SGD lr 0.2 everywhere, the tables'
SGD fused into the backward pass (``fuse_embedding_optimizer``).

It reads the caller's ``.npz`` (``ids_B`` [n, B, 26] field-local ids, ``dense_B``, ``label_B``, ``grad_B`` [B, 26,
16] for every batch size B, and ``vocab``), then serves one JSON command per stdin line, one JSON answer per stdout
line, so that the caller can alternate it with mlet_jax's steps in one run while this process sits idle in a
blocking read:

* ``{"cmd": "dlrm", "batch": B, "steps": n}``: ``n`` train steps cycling through the batches of size B (the first
  call per B also runs 3 untimed warm-up steps, and every call first runs untimed steps: at least ``"warmup"``
  (default 0) and for at least ``"warmup_s"`` seconds (default 0)); answers ``{"times": [seconds per step]}``.
* ``{"cmd": "emb", "batch": B, "steps": n}``: the embedding part alone: FBGEMM's CPU
  ``SplitTableBatchedEmbeddingBagsCodegen`` (26 tables, sum pooling of one id per bag, EXACT_SGD lr 0.2 fused into
  the backward) forward on the batch's ids, then backward with the fixed upstream gradient ``grad_B``.
* ``{"cmd": "ceil"}``: torch's fp32 matmul GFLOP/s at 2048^3 and at the DLRM MLP's largest layer.
* ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help=".npz written by bench_torchrec")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if not os.path.exists(a.data):
        p.error(f"argument --data: {a.data} not found")

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    import fbgemm_gpu  # noqa: F401  (loads the CPU ops)
    import torchrec
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.models.dlrm import DLRM
    from torchrec.modules.fused_embedding_modules import fuse_embedding_optimizer

    z = np.load(a.data)
    vocab = [int(v) for v in z["vocab"]]
    dim = int(z["dim"])
    n_f = len(vocab)
    keys = [f"C{i + 1}" for i in range(n_f)]
    cpu = torch.device("cpu")
    sizes = sorted(int(k[4:]) for k in z.files if k.startswith("ids_"))

    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=f"t{i}", embedding_dim=dim, num_embeddings=v,
                                                            feature_names=[keys[i]]) for i, v in enumerate(vocab)],
                                 device=cpu)
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=int(z["num_dense"]),
                 dense_arch_layer_sizes=[*(int(x) for x in z["bottom_mlp"]), dim],
                 over_arch_layer_sizes=[*(int(x) for x in z["top_mlp"]), 1])
    model = fuse_embedding_optimizer(model, optimizer_type=torch.optim.SGD, optimizer_kwargs={"lr": 0.2}, device=cpu)
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if "embedding" not in n], lr=0.2)
    lossf = torch.nn.BCEWithLogitsLoss()

    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(v, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for v in vocab],
        optimizer=EmbOptimType.EXACT_SGD, learning_rate=0.2, pooling_mode=PoolingMode.SUM)

    data = {}
    for b in sizes:
        ids = z[f"ids_{b}"].astype(np.int64)  # [n, B, F]
        batches = []
        for i in range(ids.shape[0]):
            values = torch.from_numpy(np.ascontiguousarray(ids[i].T.reshape(-1)))  # feature-major, as a KJT holds
            kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values,
                                                      lengths=torch.ones(n_f * b, dtype=torch.int32))
            offsets = torch.arange(n_f * b + 1, dtype=torch.int64)  # one id per bag
            batches.append((torch.from_numpy(z[f"dense_{b}"][i]), kjt, torch.from_numpy(z[f"label_{b}"][i]),
                            values, offsets))
        data[b] = (batches, torch.from_numpy(z[f"grad_{b}"].reshape(b, n_f * dim)))

    def dlrm_step(d, s, y):
        opt.zero_grad()
        loss = lossf(model(d, s).squeeze(-1), y)
        loss.backward()
        opt.step()

    def emb_step(values, offsets, g):
        out = tbe(values, offsets)  # [B, F d]
        out.backward(g)             # the fused SGD updates the touched rows

    warm = set()

    def run(kind, b, steps, warmup=0, warmup_s=0.0):
        batches, g = data[b]
        call = ((lambda i: dlrm_step(*batches[i % len(batches)][:3])) if kind == "dlrm" else
                (lambda i: emb_step(*batches[i % len(batches)][3:], g)))
        if (kind, b) not in warm:
            for i in range(3):
                call(i)
            warm.add((kind, b))
        t_end, i = time.perf_counter() + warmup_s, 0
        while i < warmup or time.perf_counter() < t_end:  # untimed, as the mlet_jax segments' first steps
            call(i)
            i += 1
        times = []
        for j in range(i, i + steps):
            t0 = time.perf_counter()
            call(j)
            times.append(time.perf_counter() - t0)
        return times

    def gflops(m, k, n, reps=5):
        x, w = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.matmul(x, w, out=out)
        best = min(_t(lambda: torch.matmul(x, w, out=out)) for _ in range(reps))
        return 2.0 * m * k * n / best / 1e9

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "torch": torch.__version__, "torchrec": torchrec.__version__,
           "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?"), "threads": torch.get_num_threads(),
           "sizes": sizes})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] in ("dlrm", "emb"):
            reply({"times": run(cmd["cmd"], int(cmd["batch"]), int(cmd["steps"]), int(cmd.get("warmup", 0)),
                                float(cmd.get("warmup_s", 0.0)))})
        elif cmd["cmd"] == "ceil":
            reply({"torch_matmul_2048_gflops": gflops(2048, 2048, 2048),
                   "torch_matmul_mlp_gflops": gflops(int(cmd.get("m", 4096)), 512, 256)})
        else:
            reply({"error": f"unknown command {cmd['cmd']!r}"})
    return 0


def _t(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
