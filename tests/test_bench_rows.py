"""benchmarks/bench_rows.py: its row passes against a numpy float64 transcription, the slot-major rows it feeds
them, a smoke run's output structure, and the usage error for missing data."""

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench_rows


def test_row_step_is_adagrad_on_the_batch_rows():
    rng = np.random.default_rng(0)
    table, acc = rng.standard_normal((6, 3)), rng.random((6, 3))
    r = np.array([4, 1, 4, 0, 4])  # row 4 three times: every slot adds its own gradient
    got_t, got_a = bench_rows.row_step(jnp.asarray(table, jnp.float32), jnp.asarray(acc, jnp.float32), jnp.asarray(r))
    g = table[r] * 1e-3 + 1.0
    want_a = acc.copy()
    np.add.at(want_a, r, g * g)
    want_t = table.copy()
    np.add.at(want_t, r, -0.02 * g / np.sqrt(want_a[r]))
    np.testing.assert_allclose(np.asarray(got_a), want_a, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got_t), want_t, rtol=1e-6, atol=1e-7)
    assert not np.allclose(want_t[4], table[4] - 0.02 * g[0] / np.sqrt(acc[4] + g[0] ** 2))  # repeats do count


def test_slot_rows_are_slot_major_fused_rows():
    sparse = np.array([[0, 2], [1, 0], [1, 3], [0, 1]])  # 4 samples, fields of 2 and 4 ids
    got = bench_rows.slot_rows(sparse, np.array([2, 4]), batch=2, n_batches=2)
    # batch 0: field 0's rows (0, 1), then field 1's (2 + 2, 2 + 0); batch 1: (1, 0), (2 + 3, 2 + 1)
    assert [np.asarray(b).tolist() for b in got] == [[0, 1, 4, 2], [1, 0, 5, 3]]


def test_smoke_run_output_structure():
    rec = bench_rows.main(["--smoke", "--batches", "3", "--batch", "64", "--repeats", "1", "--widths", "4,8"])
    assert rec["rows"] == 357 and rec["slots_per_step"] == 64 * 3
    assert set(rec["ms_per_step_best"]) == {4, 8} and len(rec["ms_per_step_all"][4]) == 1
    assert rec["machine"]["cpus"] >= 1 and rec["machine"]["device"].startswith("cpu")


def test_missing_data_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLET_PEER_DATA", raising=False)
    with pytest.raises(SystemExit) as e:
        bench_rows.main([])
    assert e.value.code == 2 and "argument --data: required here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench_rows.main(["--data", str(tmp_path / "none")])
    assert e.value.code == 2 and "none_train.npz not found" in capsys.readouterr().err
