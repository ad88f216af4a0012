"""benchmarks/bench_data.py: the generated file's format (read back with plain Python), a small run, and that it
never deletes or reuses a folder it did not write."""

import numpy as np
import pytest

from benchmarks import bench_data


def test_generated_file_is_criteo_format(tmp_path):
    path = tmp_path / "train.txt"
    bench_data.generate(str(path), rows=300, seed=1, chunk=128)  # three chunks
    lines = path.read_text().splitlines()
    cols = [ln.split("\t") for ln in lines]
    assert len(lines) == 300 and {len(c) for c in cols} == {40}
    assert {c[0] for c in cols} <= {"0", "1"}
    ints = [int(x) for c in cols for x in c[1:14] if x]
    assert min(ints) < 0 and 0 < sum(x == "" for c in cols for x in c[1:14]) < 300 * 13
    cats = [x for c in cols for x in c[14:] if x]
    assert all(len(x) == 8 and int(x, 16) >= 0 for x in cats)


def test_small_run_and_its_folder(tmp_path):
    wd = tmp_path / "work"
    wd.mkdir()
    res = bench_data.main(["--rows", "3000", "--workdir", str(wd), "--batch-size", "512"])
    assert res["rows"] == 3000 and res["mlet_rows_per_s"] > 0 and res["machine"]["cpus"] >= 1
    if res["pandas"] != "not installed":
        # both pipelines keep every row and agree on the split (checked inside: n == rows)
        assert res["pandas_rows_per_s"] > 0 and np.isclose(res["speedup"], res["pandas_s"] / res["mlet_s"], rtol=0.05)
    assert wd.is_dir() and list(wd.iterdir()) == []  # its own files gone, the given (empty) folder kept


def test_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        bench_data.main(["--rows", "10", "--workdir", str(tmp_path)])
    assert e.value.code == 2 and "argument --workdir" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"
