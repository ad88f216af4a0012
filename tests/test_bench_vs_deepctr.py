"""benchmarks/bench_vs_deepctr.py: smoke mode (tiny arrays, no DeepCTR-Torch), the markdown table, and the usage
errors for missing outside paths."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from benchmarks import bench_vs_deepctr


def test_smoke_mode_trains_and_reports(tmp_path):
    out = tmp_path / "rows.jsonl"
    md = tmp_path / "table.md"
    rows = bench_vs_deepctr.main(["--smoke", "--models", "DeepFM", "--kinds", "single", "--workdir", str(tmp_path),
                          "--out", str(out), "--md", str(md)])
    assert len(rows) == 1
    r = rows[0]
    assert r["lib"] == "mlet_jax" and r["model"] == "DeepFM" and r["sparse_tables"]
    assert r["steady_sps"] > 0 and r["step_flops"] > 0 and r["body_ms"] > 0
    assert 0.5 < r["test_auc"] <= 1 and np.isfinite(r["test_logloss"])
    assert json.loads(out.read_text().splitlines()[0])["model"] == "DeepFM"
    assert "| DeepFM | 64 | - |" in md.read_text()
    assert r["machine"]["cpus"] >= 1


def test_deepctr_paths_are_required_before_anything_runs(tmp_path, monkeypatch, capsys):
    prefix = bench_vs_deepctr.write_tiny_arrays(str(tmp_path / "d"), n_train=10, n_test=10)
    for env in ("MLET_PEER_DATA", "MLET_PEER_BENCH", "MLET_DEEPCTR_PYTHON"):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(SystemExit) as e:
        bench_vs_deepctr.main([])
    assert e.value.code == 2 and "argument --data: required here; give --data PATH or set MLET_PEER_DATA" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_vs_deepctr.main(["--data", prefix])
    assert "argument --deepctr-python: required here" in capsys.readouterr().err
    monkeypatch.setenv("MLET_DEEPCTR_PYTHON", str(tmp_path / "d_train.npz"))  # any existing file
    with pytest.raises(SystemExit):
        bench_vs_deepctr.main(["--data", prefix, "--peer-dir", str(tmp_path)])
    assert f"argument --peer-dir: {tmp_path}/bench_deepctr.py, {tmp_path}/bench_ceilings.py not found" in \
        capsys.readouterr().err


def test_tiny_arrays_match_the_peer_bench_format(tmp_path):
    from mlet_jax.data.registry import load_dataset

    prefix = bench_vs_deepctr.write_tiny_arrays(str(tmp_path / "d"), n_train=100, n_test=50)
    ds = load_dataset("arrays", prefix)
    assert ds.train.dense.shape == (100, 13) and ds.train.ids.shape == (100, 26) and len(ds.test) == 50
    assert len(ds.schema.vocab_sizes) == 26


def test_markdown_ratios_and_floor():
    base = {"batch_size": 1024, "test_auc": 0.75, "test_logloss": 0.48, "seed": 1}
    rows = [dict(base, lib="deepctr-torch", model="DCN", steady_sps=10_000.0),
            dict(base, lib="mlet_jax", kind="single", model="DCN", steady_sps=60_000.0, step_flops=2e9),
            dict(base, lib="mlet_jax", kind="mlet", model="DCN", steady_sps=50_000.0, step_flops=2.1e9)]
    table = bench_vs_deepctr.markdown(rows, {"numpy_matmul_fp32_gflops": 200.0})
    line = table.splitlines()[-1]
    # 60k samples/s at 2 GFLOP per 1024-row step = 117 GFLOP/s, 59% of 200.
    assert "| DCN | 1024 | 10,000 | 60,000 | 6.0x | 50,000 | 1.20x |" in line and "2.00, 59%" in line
    assert "| +0.0000 (1 / 1 runs) |" in line
    # 10x DeepCTR-Torch's 10,000 samples/s leaves 1024 / 100,000 s = 10.24 ms a step; 2 GFLOP at 200 GFLOP/s: 10 ms
    assert line.endswith("| 10.2 / 10.0 |")
    rows[0]["steady_sps"] = 20_000.0  # 5.12 ms: below what the FLOPs need at the ceiling
    assert bench_vs_deepctr.markdown(rows, {"matmul_gflops": 200.0}).splitlines()[-1].endswith(
        "| 5.1 / 10.0 (below the floor) |")


def test_markdown_auc_gap_has_welch_standard_error():
    rows = []
    for seed, (a_d, a_s) in enumerate([(0.750, 0.748), (0.752, 0.753), (0.746, 0.742)]):
        base = {"batch_size": 1024, "test_logloss": 0.48, "seed": seed, "model": "DCN", "step_flops": 1e9}
        rows += [dict(base, lib="deepctr-torch", steady_sps=1.0, test_auc=a_d),
                 dict(base, lib="mlet_jax", kind="single", steady_sps=5.0, test_auc=a_s)]
    line = bench_vs_deepctr.markdown(rows, {}).splitlines()[-1]
    d, s = np.array([0.750, 0.752, 0.746]), np.array([0.748, 0.753, 0.742])
    # by hand: means 0.749333 and 0.747667; sample variances 9.333e-6 and 3.0333e-5; se = sqrt((v_d + v_s) / 3)
    assert np.sqrt((9.3333e-6 + 3.0333e-5) / 3) == pytest.approx(0.0036362, rel=1e-4)
    assert "| -0.0017 +- 0.0036 (3 / 3 seeds) |" in line
    assert f"{d.mean():.4f} +- {d.std(ddof=1):.4f} / {s.mean():.4f} +- {s.std(ddof=1):.4f} / - |" in line


def test_markdown_row_floor():
    base = {"batch_size": 1024, "test_auc": 0.75, "test_logloss": 0.48, "seed": 1}
    rows = [dict(base, lib="deepctr-torch", model="DCN", steady_sps=10_000.0),
            dict(base, lib="mlet_jax", kind="single", model="DCN", steady_sps=60_000.0, step_flops=2e9,
                 distinct_rows=10_000.0, body_ms=12.0)]
    ceil = {"matmul_gflops": 200.0, "jax_random_Mrows_per_s": 20.0, "jax_random_scatter_add_Mrows_per_s": 40.0}
    rows += [dict(r, model="NFM") for r in rows]  # a second model: every row of the table
    lines = bench_vs_deepctr.markdown(rows, ceil).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| DCN |") and lines[3].startswith("| NFM |")
    line = lines[2]
    # by hand: 10,000 rows x (2 gathers at 20M/s + 2 scatter-adds at 40M/s) = 1.0 + 0.5 ms; FLOPs 2 GFLOP at 200:
    # 10 ms; the step is 1024 / 60,000 s = 17.07 ms = 1.48x the 11.5 ms floor; 10x DeepCTR-Torch allows 10.24 ms,
    # less than the 12 ms body alone; the rest of the step: 17.07 - 12 = 5.07 ms
    assert "| 10,000, 1.5x | 12.0 / 5.1 | 10.2 / 10.0 + 1.5 (below the floor) (below the body alone) |" in line
    rows[3]["body_ms"] = 9.0  # NFM: a budget above the body alone
    assert lines[3].endswith("| 12.0 / 5.1 | 10.2 / 10.0 + 1.5 (below the floor) (below the body alone) |")
    assert bench_vs_deepctr.markdown(rows, ceil).splitlines()[3].endswith(
        "| 9.0 / 8.1 | 10.2 / 10.0 + 1.5 (below the floor) |")


def test_distinct_rows_counts_each_fields_distinct_ids(tmp_path):
    from mlet_jax.data.base import batches
    from mlet_jax.data.registry import load_dataset
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models import build_model
    from mlet_jax.training import TrainConfig, Trainer

    ds = load_dataset("arrays", bench_vs_deepctr.write_tiny_arrays(str(tmp_path / "d"), n_train=256, n_test=8))
    trainer = Trainer(build_model("deepfm", ds.schema, EmbeddingSpec(kind="single", dim=4)), TrainConfig())
    got = bench_vs_deepctr.distinct_rows(trainer, ds.train, 64, seed=3, n_batches=4)
    # by field: the fields own disjoint table rows, so a batch's distinct rows are the sum of its fields' distinct ids
    ids = [b["ids"] for b in itertools.islice(batches(ds.train, 64, seed=3), 4)]
    want = np.mean([sum(np.unique(b[:, f]).size for f in range(26)) for b in ids])
    assert want > 64 and got == want


def test_body_step_is_the_models_loss_and_gradient_without_the_tables(tmp_path):
    """``benchmarks.common.body_step`` (what the body column times) against the whole model's dense gradient: the
    same loss, the same gradient of every body parameter (none for the embedding stage's MLET projection and
    first-order dense weights, which act through the features), and the features' gradient of the body in one
    pass, though it runs in chunks of 16 samples."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from benchmarks.common import body_step
    from mlet_jax.data.registry import load_dataset
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models import build_model
    from mlet_jax.training import TrainConfig, Trainer

    ds = load_dataset("arrays", bench_vs_deepctr.write_tiny_arrays(str(tmp_path / "d"), n_train=64, n_test=8))
    trainer = Trainer(build_model("dcn", ds.schema, EmbeddingSpec(kind="mlet", dim=4, inner_dim=8)),
                      TrainConfig(loss_reduction="sum", chunk_samples=16))
    batch = {"dense": ds.train.dense[:64], "ids": ds.train.ids[:64], "label": ds.train.label[:64]}
    state = trainer.init(0, batch)
    fn, args = body_step(trainer, state, batch)
    loss, g_rest, g_features = fn(*args)

    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    (want_loss, _), want = jax.value_and_grad(trainer.loss_and_logits, has_aux=True)(state.params, jb)
    want = traverse_util.flatten_dict(want)
    assert set(g_rest) == set(want) - set(trainer.table_paths) and len(g_rest) > 4
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    stage = {("embeddings", "projection"), ("linear", "dense")}  # the embedding stage's: reached through the features
    assert stage <= set(g_rest)
    for k, g in g_rest.items():
        if k in stage:
            assert not np.any(np.asarray(g)), k
        else:
            np.testing.assert_allclose(g, want[k], rtol=2e-4, atol=1e-6, err_msg="/".join(k))

    features = args[1]
    body = lambda f: trainer.model.apply({"params": state.params}, f, jb["dense"], method="body")  # noqa: E731
    g_emb = jax.grad(lambda e: jnp.sum(jax.nn.softplus(body(features._replace(emb_BxFxD=e)))
                                       - jb["label"] * body(features._replace(emb_BxFxD=e))))(features.emb_BxFxD)
    np.testing.assert_allclose(g_features.emb_BxFxD, g_emb, rtol=2e-4, atol=1e-6)
