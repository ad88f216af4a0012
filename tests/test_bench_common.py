"""benchmarks/common.py: the timing loop (against a scripted clock), the machine record and the outside-path checks."""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common


@pytest.fixture
def clock(monkeypatch):
    """perf_counter reads 0, 1, 10, 12, 20, 23, ...: the n-th (start, stop) pair is n seconds apart; blocks recorded."""
    ticks, blocked = iter(10 * (i // 2) + (i % 2) * (i // 2 + 1) for i in range(1000)), []
    monkeypatch.setattr(common.time, "perf_counter", lambda: float(next(ticks)))
    monkeypatch.setattr(jax, "block_until_ready", lambda x: blocked.append(x) or x)
    return blocked


def test_timed_blocks_on_the_whole_result(clock):
    out, sec = common.timed(lambda a, b=0: (a, {"x": b}), 1, b=2)
    assert out == (1, {"x": 2}) and sec == 1.0 and clock == [(1, {"x": 2})]


def test_best_of_discards_the_warm_up_call(clock):
    # intervals 1 (warm-up), 2, 3, 4: the fastest timed one is 2
    assert common.best_of(lambda: None, reps=3) == 2.0 and len(clock) == 4


def test_round_robin_alternates_keys_and_carries_states(clock):
    calls = []

    def step(name):
        return lambda state, batch: (calls.append((name, state, batch)) or (state + 1, None))

    states = {"a": 10, "b": 20}
    times = common.round_robin({"a": step("a"), "b": step("b")}, states, lambda i: f"batch{i}", rounds=2)
    assert calls == [("a", 10, "batch0"), ("b", 20, "batch0"), ("a", 11, "batch1"), ("b", 21, "batch1")]
    assert states == {"a": 12, "b": 22} and times == {"a": [1.0, 3.0], "b": [2.0, 4.0]}


def test_timed_real_jax_result_is_ready():
    (y,), sec = common.timed(lambda x: (jnp.sin(x) ** 2 + jnp.cos(x) ** 2,), jnp.arange(4.0))
    assert sec > 0 and jnp.allclose(y, 1.0)


def test_machine_record():
    m = common.machine()
    assert m["cpus"] == os.cpu_count() and m["jax"] == jax.__version__
    assert m["device"] == f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{jax.device_count()}"
    assert len(m["load_avg"]) == 3 and m["commit"] and len(m["commit"].split("+")[0]) >= 7
    line = common.describe(m)
    assert line.startswith(m["device"]) and f"{m['cpus']} CPUs" in line and m["commit"] in line


def test_require_path_names_the_option_and_the_variable(tmp_path, capsys):
    p = argparse.ArgumentParser()
    (tmp_path / "x_train.npz").write_bytes(b"")
    assert common.require_path(p, str(tmp_path / "x"), "--data", "ENV", files=("_train.npz",)) == str(tmp_path / "x")
    with pytest.raises(SystemExit) as e:
        common.require_path(p, None, "--data", "MLET_PEER_DATA")
    assert e.value.code == 2 and "argument --data: required here; give --data PATH or set MLET_PEER_DATA" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        common.require_path(p, str(tmp_path / "x"), "--data", "ENV", files=("_train.npz", "_test.npz"))
    assert f"argument --data: {tmp_path}/x_test.npz not found" in capsys.readouterr().err


def test_add_external_path_defaults_to_the_variable(monkeypatch):
    monkeypatch.setenv("MLET_TEST_PATH", "/some/where")
    p = argparse.ArgumentParser()
    common.add_external_path(p, "--peer-dir", "MLET_TEST_PATH", "the folder")
    assert p.parse_args([]).peer_dir == "/some/where" and p.parse_args(["--peer-dir", "x"]).peer_dir == "x"


def test_experiments_never_import_benchmarks():
    import ast
    from pathlib import Path

    bad = []
    for path in sorted((Path(common.REPO) / "experiments").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "benchmarks"]
    assert not bad


def test_write_jsonl_reads_back(tmp_path):
    import json

    rows = [{"model": "dcn", "ms": 1.5}, {"model": "wdl", "ms": 0.25, "machine": {"cpus": 2}}]
    common.write_jsonl(str(tmp_path / "sub" / "rows.jsonl"), rows)
    text = (tmp_path / "sub" / "rows.jsonl").read_text()
    assert text.endswith("\n") and [json.loads(x) for x in text.splitlines()] == rows


@pytest.mark.parametrize("chunk", [0, 64])
def test_step_gflop_counts_every_chunk_against_the_hand_count(tmp_path, chunk):
    """WDL's DNN on 26 fields of width 4 and 13 dense features: (117 -> 256 -> 128 -> 1) matmuls, forward plus the
    backward's dX and dW, are 6 B sum(in * out) FLOPs; XLA adds the elementwise ops and the update on top (a few %).
    A step in chunks of 64 samples at batch 256 runs its body in a scan, which XLA's cost analysis counts once: the
    count must still cover all 256 samples."""
    import numpy as np

    from benchmarks.bench_vs_deepctr import write_tiny_arrays
    from mlet_jax.data import load_dataset
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models import build_model
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer

    ds = load_dataset("arrays", write_tiny_arrays(str(tmp_path / "d"), n_train=256, n_test=8))
    trainer = Trainer(build_model("wdl", ds.schema, EmbeddingSpec(kind="single", dim=4)),
                      TrainConfig(optimizer=OptimizerSpec("adagrad", 0.02), chunk_samples=chunk))
    b = 256
    batch = {k: np.asarray(getattr(ds.train, k)[:b]) for k in ("dense", "ids", "label")}
    state = trainer.init(0, batch)
    hand = 6 * b * (117 * 256 + 256 * 128 + 128 * 1) / 1e9
    assert hand <= common.step_gflop(trainer, state, batch) <= 1.3 * hand
