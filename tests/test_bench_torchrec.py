"""benchmarks.bench_torchrec and benchmarks.bench_ceilings: the mlet_jax side at toy size, its embedding step
against a numpy float64 SGD reference, the argument errors; the torch side only where $MLET_TREC_PYTHON names the
TorchRec venv."""

import json
import os

import numpy as np
import pytest

from benchmarks import bench_ceilings, bench_torchrec


def _reference(table, ids_steps, grads, offsets, lr):
    """numpy float64: each step returns the rows read before the update, then SGD on the summed gradients."""
    t = table.astype(np.float64)
    outs = []
    for ids, g in zip(ids_steps, grads, strict=True):
        rows = ids + offsets
        outs.append(t[rows].copy())
        acc = np.zeros_like(t)
        np.add.at(acc, rows.reshape(-1), g.reshape(-1, t.shape[1]).astype(np.float64))
        t = t - lr * acc
    return t, outs


@pytest.mark.parametrize("draw", ["zipf", "uniform"])  # uniform ids overflow the compact capacity: the fallback
def test_embedding_step_equals_numpy_sgd(draw):
    import jax

    vocab, batch, dim = bench_torchrec.TOY_VOCAB, 64, 4
    plan = bench_torchrec.compact_plan_for(vocab, batch)
    assert plan is not None and plan[2]  # the toy case takes the cond path with both branches
    rng = np.random.default_rng(1)
    if draw == "zipf":
        ids = [bench_torchrec.zipf_batches(vocab, batch, 1, dim, s)[f"ids_{batch}"][0] for s in range(3)]
    else:
        ids = [np.stack([rng.integers(0, v, batch) for v in vocab], 1).astype(np.int32) for _ in range(3)]
    distinct = len(np.unique(ids[0] + np.r_[0, np.cumsum(vocab)[:-1]]))
    assert (distinct > plan[0] * plan[1]) == (draw == "uniform")
    grads = [rng.standard_normal((batch, len(vocab), dim)).astype(np.float32) for _ in range(3)]
    init, step = bench_torchrec.embedding_step(vocab, batch, dim, lr=0.2)
    carry = init(0)
    table0 = np.asarray(carry[0])
    outs = []
    for i, g in zip(ids, grads, strict=True):
        *carry, out = step(*carry, jax.numpy.asarray(i), jax.numpy.asarray(g))
        outs.append(np.asarray(out))
    ref_table, ref_outs = _reference(table0, ids, grads, np.r_[0, np.cumsum(vocab)[:-1]], 0.2)
    np.testing.assert_allclose(np.asarray(carry[0]), ref_table, atol=1e-5)
    for o, r in zip(outs, ref_outs, strict=True):
        np.testing.assert_allclose(o, r, atol=1e-6)


def test_zipf_batches_are_seeded_and_in_vocabulary():
    a = bench_torchrec.zipf_batches(bench_torchrec.TOY_VOCAB, 32, 2, 4, seed=3)
    b = bench_torchrec.zipf_batches(bench_torchrec.TOY_VOCAB, 32, 2, 4, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ids = a["ids_32"]
    assert ids.shape == (2, 32, 5) and ids.min() >= 0
    assert (ids.max(axis=(0, 1)) < np.asarray(bench_torchrec.TOY_VOCAB)).all()
    assert 0.12 < (ids == 0).mean() < 0.25  # Zipf(1.2): id 0 is 1 / zeta(1.2) = 17.9% of each field


def test_run_mlet_jax_side_output_structure():
    rows = bench_torchrec.run(batches=(32, 64), repeats=1, steps=2, n_batches=2, parts=("emb",), toy=True,
                              ceilings=False, segment_warmup=3, log=lambda s: None)  # 3 untimed steps first
    body = [r for r in rows if r["part"] != "ceilings"]
    assert [(r["part"], r["side"], r["batch"]) for r in body] == [("emb", "mlet_jax_single", 32),
                                                                  ("emb", "mlet_jax_single", 64)]
    for r in body:
        assert r["steps_timed"] == 2 and r["samples_per_s"] == pytest.approx(r["batch"] / r["ms_per_step"] * 1e3)
        assert r["gflop_per_step"] >= 0 and "ratio_vs_torchrec" not in r
    assert body[1]["per_sample_ratio_vs_smallest_batch"] == pytest.approx(
        body[1]["samples_per_s"] / body[0]["samples_per_s"])
    assert rows[-1]["part"] == "ceilings" and "load_avg" in rows[-1]["machine"]
    assert "| emb | 64 | mlet_jax_single |" in bench_torchrec.markdown(rows)


@pytest.mark.slow
def test_run_dlrm_with_ceilings_and_floors():
    rows = bench_torchrec.run(batches=(32,), repeats=1, steps=1, n_batches=1, parts=("dlrm",), toy=True,
                              log=lambda s: None)
    for r in rows[:-1]:
        assert 0 < r["floor_fraction"] and r["floor_ms"] > 0 and r["gflop_per_step"] > 0
    ceil = rows[-1]["ceilings"]
    assert ceil["jax_matmul_mlp_gflops"] > 0 and ceil["numpy_random_Mrows_per_s"] > 0


@pytest.mark.parametrize("argv, needle", [
    (["--trec-python", "/nonexistent/python"], "--trec-python: /nonexistent/python not found"),
    (["--no-torch", "--repeats", "0"], "--repeats: must be >= 1"),
    (["--no-torch", "--batches", "0"], "--batches"),
    (["--no-torch", "--parts", "mlp"], "--parts"),
])
def test_bench_torchrec_argument_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        bench_torchrec.main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_bench_torchrec_needs_the_venv_and_refuses_a_foreign_output(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(bench_torchrec.TREC_PYTHON_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        bench_torchrec.main([])
    assert e.value.code == 2 and "--trec-python: required here" in capsys.readouterr().err
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("mine\n")
    with pytest.raises(SystemExit) as e:
        bench_torchrec.main(["--no-torch", "--out", str(foreign)])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err and foreign.read_text() == "mine\n"


def test_bench_ceilings_argument_errors(capsys):
    with pytest.raises(SystemExit) as e:
        bench_ceilings.main(["--repeats", "0"])
    assert e.value.code == 2 and "--repeats" in capsys.readouterr().err
    with pytest.raises(ValueError, match="gather_n"):
        bench_ceilings.measure(gather_n=0)


@pytest.mark.slow  # ~15 s of compilation on the loaded 2-core box
def test_mlp_step_equals_numpy_float64():
    import jax
    import jax.numpy as jnp

    params = bench_ceilings.mlp_params(jax.random.key(0), dim=2, num_dense=3, n_fields=2)
    rng = np.random.default_rng(0)
    dense, inter = rng.random((5, 3)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    label = np.array([0, 1, 0, 0, 1], np.float32)
    new = bench_ceilings.mlp_step(params, jnp.asarray(dense), jnp.asarray(inter), jnp.asarray(label))
    # numpy float64 forward and hand-derived backward of the same MLPs
    ps = [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in params]
    acts, x = [], dense.astype(np.float64)
    for w, b in ps[:4]:
        acts.append(x)
        x = np.maximum(x @ w + b, 0)
    h = np.concatenate([x, inter], 1)
    for i, (w, b) in enumerate(ps[4:]):
        acts.append(h)
        h = h @ w + b
        if i < 2:
            h = np.maximum(h, 0)
    z = h[:, 0]
    delta = ((1 / (1 + np.exp(-z)) - label) / len(z))[:, None]  # d mean BCE / d logit
    grads = [None] * 7
    for i in range(6, -1, -1):
        w, b = ps[i]
        grads[i] = (acts[i].T @ delta, delta.sum(0))
        up = delta @ w.T
        if i == 4:
            up = up[:, :2]  # the bottom MLP's output part of the top MLP's input
        if i > 0:
            delta = up * (acts[i] > 0) if i != 4 else up * (acts[4][:, :2] > 0)
    for (w, b), (gw, gb), (nw, nb) in zip(ps, grads, new, strict=True):
        np.testing.assert_allclose(np.asarray(nw), w - 0.2 * gw, atol=1e-5)
        np.testing.assert_allclose(np.asarray(nb), b - 0.2 * gb, atol=1e-5)


@pytest.mark.skipif(not os.environ.get(bench_torchrec.TREC_PYTHON_ENV),
                    reason="needs $MLET_TREC_PYTHON (TorchRec venv)")
def test_torch_side_runs_the_same_ids(tmp_path):
    out = tmp_path / "trec.jsonl"
    bench_torchrec.main(["--toy", "--batches", "32", "--repeats", "1", "--steps", "2", "--n-batches", "1",
                         "--kinds", "single", "--no-ceilings", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    sides = {(r["part"], r.get("side")) for r in rows}
    assert {("dlrm", "torchrec"), ("emb", "torchrec"), ("dlrm", "mlet_jax_single")} <= sides
    for r in rows:
        if r.get("side") == "mlet_jax_single":
            peer = next(p for p in rows if p.get("side") == "torchrec" and p["part"] == r["part"])
            assert r["ratio_vs_torchrec"] == pytest.approx(r["samples_per_s"] / peer["samples_per_s"])
            assert r["torch"]["torchrec"] == "1.8.0"


@pytest.mark.parametrize("argv, needle", [(["--fractions", "0"], "--fractions"), (["--steps", "0"], "--steps")])
def test_bench_compact_fraction_argument_errors(argv, needle, capsys):
    from benchmarks import bench_compact_fraction

    with pytest.raises(SystemExit) as e:
        bench_compact_fraction.main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_chunked_side_counts_every_chunks_flops():
    """XLA's cost analysis counts a scan's body once; a chunked side reports its one-pass twin's FLOPs, which are
    at least the MLPs' matmuls counted by hand (forward 2 B m n per layer, backward twice that)."""
    rows = bench_torchrec.run(batches=(64,), repeats=1, steps=1, n_batches=1, parts=("dlrm",), kinds=("single",),
                              toy=True, ceilings=False, chunks=(0, 16), log=lambda s: None)
    gflop = {r["side"].rsplit("chunk", 1)[1]: r["gflop_per_step"] for r in rows[:-1]}
    assert set(gflop) == {"0", "16"}
    n_f, d = len(bench_torchrec.TOY_VOCAB) + 1, 16  # run()'s default dim
    bottom = [bench_torchrec.NUM_DENSE, 16, 8, d]
    top = [d + n_f * (n_f - 1) // 2, 16, 8, 1]
    matmul = sum(2 * 64 * m * n * 3 for dims in (bottom, top) for m, n in zip(dims[:-1], dims[1:], strict=True))
    assert gflop["16"] == pytest.approx(gflop["0"], rel=1e-6) and gflop["16"] * 1e9 >= matmul
