"""Sharded training on 8 CPU devices equals one device, and no device holds a whole table.

The 8-device checks run in a subprocess: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` only takes effect
before JAX initializes its backend, and the other tests must keep seeing one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mlet_jax.distributed import _is_table_leaf, full_shape_ops, make_mesh, state_shardings

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from mlet_jax.distributed import full_shape_ops, make_mesh, shard_batch, shard_train_step
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models.dlrm import DLRM
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer

    sparse, opt = sys.argv[1] == "sparse", sys.argv[2]
    assert jax.device_count() == 8, jax.devices()
    vocab = (100, 700, 3200)  # 4000 rows: 500 per device
    model = DLRM(vocab_sizes=vocab, num_dense=2, embedding=EmbeddingSpec("mlet", 4, 8), bottom_mlp=(8,),
                 top_mlp=(8,))
    spec = OptimizerSpec("adagrad", lr=0.05) if opt == "adagrad" else OptimizerSpec("sgd", lr=0.2)
    trainer = Trainer(model, TrainConfig(spec, sparse_tables=sparse))
    rng = np.random.default_rng(0)
    data = [{"dense": rng.standard_normal((64, 2)).astype(np.float32),
             "ids": np.stack([rng.integers(0, v // 4, 64) for v in vocab], 1).astype(np.int32),  # repeats
             "label": (rng.random(64) < 0.3).astype(np.float32)} for _ in range(5)]
    one = trainer.init(0, data[0])
    mesh = make_mesh(data=4, model=2)
    step, many = shard_train_step(trainer, mesh, trainer.init(0, data[0]))
    sharded_hlo = step.lower(many, shard_batch(data[0], mesh)).compile().as_text()
    single_hlo = trainer.train_step.lower(one, data[0]).compile().as_text()
    for b in data:
        one, _ = trainer.train_step(one, b)
        many, _ = step(many, shard_batch(b, mesh))
    diffs = {jax.tree_util.keystr(p): float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(one.params),
                                  jax.tree_util.tree_leaves(many.params))}
    table = many.params["embeddings"]["table"]
    acc = many.table_state["embeddings/table"].sum if sparse and opt == "adagrad" else None
    print("RESULT" + json.dumps({
        "diffs": diffs, "step": int(many.step),
        "table_shards": sorted({tuple(s.data.shape) for s in table.addressable_shards}),
        "acc_shards": None if acc is None else sorted({tuple(s.data.shape) for s in acc.addressable_shards}),
        "full_table_ops_sharded": full_shape_ops(sharded_hlo, (4000, 8)),
        "full_table_ops_single": len(full_shape_ops(single_hlo, (4000, 8))),
    }))
""")


def _run(path: str, opt: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", SCRIPT, path, opt], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("path, opt", [("sparse", "adagrad"),
                                       pytest.param("dense", "sgd", marks=pytest.mark.slow),
                                       pytest.param("sparse", "sgd", marks=pytest.mark.slow)])
def test_sharded_steps_equal_one_device_and_tables_stay_split(path, opt):
    r = _run(path, opt)
    assert r["step"] == 5
    assert max(r["diffs"].values()) <= 1e-5, r["diffs"]
    assert r["table_shards"] == [[500, 8]]  # every device holds 1/8 of the rows
    if r["acc_shards"] is not None:
        assert r["acc_shards"] == [[500, 8]]
    # The check is not vacuous: the one-device program does hold [4000, 8] arrays; the partitioned one never does.
    assert r["full_table_ops_single"] > 0
    assert r["full_table_ops_sharded"] == [], r["full_table_ops_sharded"][:3]


def test_mesh_and_shardings_on_one_device():
    mesh = make_mesh()
    assert mesh.axis_names == ("data", "model") and mesh.devices.size == jax.device_count()
    with pytest.raises(ValueError, match="needs 2 devices"):
        make_mesh(data=2, model=1, devices=jax.devices()[:1])
    state = {"params": {"embeddings": {"table": np.zeros((8, 2)), "projection": np.zeros((2, 2, 2))}},
             "table_state": {"embeddings/table": (np.zeros([]), np.zeros((8, 2)))}}
    sh = state_shardings(state, mesh)
    assert sh["params"]["embeddings"]["table"].spec == jax.sharding.PartitionSpec(("data", "model"))
    assert sh["params"]["embeddings"]["projection"].spec == jax.sharding.PartitionSpec()
    assert sh["table_state"]["embeddings/table"][1].spec == jax.sharding.PartitionSpec(("data", "model"))
    assert sh["table_state"]["embeddings/table"][0].spec == jax.sharding.PartitionSpec()  # scalar count


def test_full_shape_ops_finds_only_exact_shapes():
    hlo = "%a = f32[4000,8]{1,0} parameter(0)\n%b = f32[500,8]{1,0} slice(%a)\n%c = f32[40000,8]{1,0} add()"
    assert full_shape_ops(hlo, (4000, 8)) == ["%a = f32[4000,8]{1,0} parameter(0)"]
    assert _is_table_leaf((jax.tree_util.DictKey("table"),))
    assert not _is_table_leaf((jax.tree_util.DictKey("projection"),))
    assert np.array_equal(np.asarray(make_mesh().devices.shape), [jax.device_count(), 1])
