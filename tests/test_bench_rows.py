"""benchmarks/bench_rows.py runs in smoke mode and reports one time per width."""

from benchmarks import bench_rows


def test_smoke_reports_each_width():
    rec = bench_rows.main(["--smoke", "--batches", "3", "--batch", "64", "--repeats", "1", "--widths", "4,8"])
    assert rec["rows"] == 357 and rec["slots_per_step"] == 64 * 3
    assert set(rec["ms_per_step_best"]) == {4, 8} and all(t > 0 for t in rec["ms_per_step_best"].values())
