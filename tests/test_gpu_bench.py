"""The GPU benchmark's CPU smoke mode runs end to end and prints its table last."""

from __future__ import annotations

import json

import jax
import numpy as np

from benchmarks import gpu_bench


def test_smoke_mode_prints_table_last(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    result = gpu_bench.main(["--smoke", "--batches", "32", "--steps", "2", "--out", str(out)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("| mlet | 32 |") and printed[-4].startswith("| embedding | batch |")
    assert [(r["kind"], r["batch"]) for r in result["runs"]] == [("single", 32), ("mlet", 32)]
    for r in result["runs"]:
        assert r["samples_per_s"] > 0 and r["floor_samples_per_s"] > 0 and np.isfinite(r["final_loss"])
    assert json.loads(out.read_text())["smoke"] is True


def test_step_cost_counts_table_traffic_and_flops():
    vocab = (10, 20)
    spec = gpu_bench.EmbeddingSpec(kind="mlet", dim=4, inner_dim=8)
    model = gpu_bench.DLRM(vocab_sizes=vocab, num_dense=gpu_bench.NUM_DENSE, embedding=spec, bottom_mlp=(6,),
                           top_mlp=(5,))
    b = {"dense": np.zeros((3, gpu_bench.NUM_DENSE), np.float32), "ids": np.zeros((3, 2), np.int32)}
    params = model.init(jax.random.key(0), b["dense"], b["ids"])["params"]
    nbytes, flops = gpu_bench.step_cost(model, params, batch=3)
    # kernels: bottom 13x6, 6x4; top (4 + 3 pairs) = 7 -> 5, 5x1; projection 2x8x4; interaction 3^2 x 4
    macs = 13 * 6 + 6 * 4 + 7 * 5 + 5 * 1 + 2 * 8 * 4 + 9 * 4
    assert flops == 6 * 3 * macs
    dense_elems = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(params)
                      if "table" not in jax.tree_util.keystr(p))
    assert nbytes == 3 * 3 * 2 * 8 * 4 + 3 * dense_elems * 4


def test_zipf_ids_in_range_and_skewed():
    ids = gpu_bench.zipf_ids((5, 1000), batch=2000, n_batches=1)
    assert ids.shape == (1, 2000, 2) and ids.min() >= 0 and (ids.max(axis=(0, 1)) < [5, 1000]).all()
    assert (ids[0, :, 1] == 0).mean() > 0.1  # the most popular id dominates
