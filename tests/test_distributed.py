"""Sharded training on 8 CPU devices equals one device, tables stay split, and fit/predict/checkpoints run sharded.

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

from mlet_jax.distributed import full_shape_ops, make_mesh, parse_mesh

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    import jax, numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from mlet_jax.distributed import full_shape_ops, make_mesh, shard_batch
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models import strip_padding
    from mlet_jax.models.dlrm import DLRM
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer

    sparse, opt = sys.argv[1] == "sparse", sys.argv[2]
    assert jax.device_count() == 8, jax.devices()
    vocab = (101, 700, 3203)  # 4004 rows: no multiple of 8, so the tables are padded to 4008 (501 per device)
    model = DLRM(vocab_sizes=vocab, num_dense=2, embedding=EmbeddingSpec("mlet", 4, 8), bottom_mlp=(8,),
                 top_mlp=(8,))
    spec = OptimizerSpec("adagrad", lr=0.05) if opt == "adagrad" else OptimizerSpec("sgd", lr=0.2)
    config = TrainConfig(spec, sparse_tables=sparse)
    one_tr, many_tr = Trainer(model, config), Trainer(model, config, mesh=make_mesh(data=4, model=2))
    rng = np.random.default_rng(0)
    data = [{"dense": rng.standard_normal((64, 2)).astype(np.float32),
             "ids": np.stack([rng.integers(0, v // 4, 64) for v in vocab], 1).astype(np.int32),  # repeats
             "label": (rng.random(64) < 0.3).astype(np.float32)} for _ in range(5)]
    one, many = one_tr.init(0, data[0]), many_tr.init(0, data[0])
    init_diff = float(np.abs(np.asarray(strip_padding(many_tr.model, many.params)[1]["embeddings"]["table"])
                             - np.asarray(one.params["embeddings"]["table"])).max())
    sharded_hlo = many_tr.train_step.lower(many, many_tr.place_batch(data[0])).compile().as_text()
    single_hlo = one_tr.train_step.lower(one, data[0]).compile().as_text()
    for b in data:
        one, _ = one_tr.train_step(one, b)
        many, _ = many_tr.train_step(many, many_tr.place_batch(b))
    _, unpadded = strip_padding(many_tr.model, many.params)
    diffs = {jax.tree_util.keystr(p): float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(one.params),
                                  jax.tree_util.tree_leaves(unpadded))}
    table = many.params["embeddings"]["table"]
    acc = many.table_opt_state["embeddings/table"].sum if sparse and opt == "adagrad" else None
    print("RESULT" + json.dumps({
        "diffs": diffs, "step": int(many.step), "init_diff": init_diff,
        "padding_rows_max": float(np.abs(np.asarray(table)[4004:]).max()),
        "table_shards": sorted({tuple(s.data.shape) for s in table.addressable_shards}),
        "acc_shards": None if acc is None else sorted({tuple(s.data.shape) for s in acc.addressable_shards}),
        "dedup_shards": None if many.dedup is None else sorted({tuple(s.data.shape)
                                                                 for s in many.dedup.addressable_shards}),
        "full_table_ops_sharded": full_shape_ops(sharded_hlo, (4008, 8)) + full_shape_ops(sharded_hlo, (4004, 8)),
        "full_table_ops_single": len(full_shape_ops(single_hlo, (4004, 8))),
    }))
""")

FIT_SCRIPT = textwrap.dedent("""
    import json, tempfile
    import jax, numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from mlet_jax.data.synthetic import make_synthetic
    from mlet_jax.distributed import make_mesh
    from mlet_jax.models import build_model, paper_embedding, strip_padding
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer, fit

    ds = make_synthetic(n_train=2048, n_valid=512, n_test=512, vocab_sizes=(37, 501, 90), num_dense=3, seed=0)
    model = build_model("deepfm", ds.schema, paper_embedding("deepfm", "mlet", 4, 8), dnn=(16,))
    config = TrainConfig(OptimizerSpec("adagrad", 0.05), loss_reduction="sum")
    mesh = make_mesh()
    kw = dict(batch_size=128, seed=3, progress=False)
    one, _ = fit(Trainer(model, config), ds.train, epochs=2, **kw)
    many, hist = fit(Trainer(model, config), ds.train, epochs=2, mesh=mesh, valid=ds.valid, **kw)
    padded = Trainer(model, config, mesh=mesh).model
    _, many_p = strip_padding(padded, many.params)
    fit_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                   zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(many_p), strict=True))
    auc_one = Trainer(model, config).evaluate(one.params, ds.test)["auc"]
    auc_many = Trainer(model, config, mesh=mesh).evaluate(many.params, ds.test)["auc"]
    with tempfile.TemporaryDirectory() as d:
        fit(Trainer(model, config), ds.train, epochs=1, mesh=mesh, checkpoint_dir=d, checkpoint_every=5, **kw)
        resumed, _ = fit(Trainer(model, config), ds.train, epochs=2, mesh=mesh, checkpoint_dir=d, **kw)
    raw = lambda st: jax.tree_util.tree_leaves(st.replace(rng=jax.random.key_data(st.rng)))
    resume_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                      zip(raw(many), raw(resumed), strict=True))
    table = many.params["embeddings"]["table"]
    print("RESULT" + json.dumps({"fit_diff": fit_diff, "auc_one": auc_one, "auc_many": auc_many,
                                 "resume_diff": resume_diff, "steps": int(many.step), "evals": len(hist.evals),
                                 "rows": table.shape[0], "shards": len(table.sharding.device_set)}))
""")


def _run(script: str, *args: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
           + " --xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("path, opt", [("sparse", "adagrad"),
                                       pytest.param("dense", "sgd", marks=pytest.mark.slow),
                                       pytest.param("sparse", "sgd", marks=pytest.mark.slow)])
def test_sharded_steps_equal_one_device_and_tables_stay_split(path, opt):
    r = _run(SCRIPT, path, opt)
    assert r["step"] == 5
    assert r["init_diff"] == 0.0  # padding does not change the real rows' initial values
    assert r["padding_rows_max"] == 0.0  # padding rows are never indexed, so they stay zero
    assert max(r["diffs"].values()) <= 1e-5, r["diffs"]
    assert r["table_shards"] == [[501, 8]]  # every device holds 1/8 of the padded rows
    if r["acc_shards"] is not None:
        assert r["acc_shards"] == [[501, 8]]
    if path == "sparse":
        assert r["dedup_shards"] == [[501]]
    # The check is not vacuous: the one-device program does hold [4004, 8] arrays; the partitioned one never does.
    assert r["full_table_ops_single"] > 0
    assert r["full_table_ops_sharded"] == [], r["full_table_ops_sharded"][:3]


def test_fit_predict_and_resume_on_a_mesh_equal_one_device():
    r = _run(FIT_SCRIPT)
    assert r["steps"] == 32 and r["evals"] == 2
    assert r["rows"] == 632 and r["shards"] == 8  # 628 rows padded to a multiple of 8, split over all devices
    assert r["fit_diff"] <= 1e-5
    assert abs(r["auc_one"] - r["auc_many"]) <= 1e-4 and r["auc_one"] > 0.55
    assert r["resume_diff"] == 0.0  # an interrupted, resumed sharded run is bit-identical to an uninterrupted one


def test_mesh_parsing_and_shapes_on_one_device():
    mesh = make_mesh()
    assert mesh.axis_names == ("data", "model") and mesh.devices.size == jax.device_count()
    assert np.array_equal(np.asarray(mesh.devices.shape), [jax.device_count(), 1])
    with pytest.raises(ValueError, match="needs 2 devices"):
        make_mesh(data=2, model=1, devices=jax.devices()[:1])
    assert parse_mesh("data=8") == {"data": 8, "model": 1}
    assert parse_mesh("data=4,model=2") == {"data": 4, "model": 2}
    for bad in ("data", "data=0", "rows=2", "data=x", "data=2,,"):
        with pytest.raises(ValueError, match="--mesh"):
            parse_mesh(bad)


def test_full_shape_ops_finds_only_exact_shapes():
    hlo = "%a = f32[4000,8]{1,0} parameter(0)\n%b = f32[500,8]{1,0} slice(%a)\n%c = f32[40000,8]{1,0} add()"
    assert full_shape_ops(hlo, (4000, 8)) == ["%a = f32[4000,8]{1,0} parameter(0)"]
