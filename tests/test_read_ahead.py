"""The threads of `prepare` (issue 16): read_ahead hands items and errors over in order and stops its thread when the
consumer stops; fields fitted by several threads give the same cache byte for byte; an error in one field's fit is
raised and leaves no cache behind."""

from __future__ import annotations

import filecmp
import threading

import pytest

from mlet_jax.data import _build
from mlet_jax.data import generate as gen
from mlet_jax.data.registry import prepare


def _reader_threads() -> int:
    return sum(t.name == "mlet-read-ahead" for t in threading.enumerate())


def test_read_ahead_yields_in_order_then_raises_the_producers_error():
    def source():
        yield from range(5)
        raise ValueError("bad block 5")

    got = []
    with pytest.raises(ValueError, match="bad block 5"):
        for x in _build.read_ahead(source(), depth=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
    assert _reader_threads() == 0


def test_read_ahead_stops_and_closes_the_source_when_the_consumer_stops():
    closed = threading.Event()

    def source():
        try:
            yield from range(10**9)
        finally:
            closed.set()

    it = _build.read_ahead(source(), depth=1)
    assert [next(it), next(it)] == [0, 1]
    it.close()
    assert closed.wait(5) and _reader_threads() == 0


@pytest.fixture()
def small_criteo(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "train.txt"
    gen.generate("criteo", str(path), scale=2e-4, seed=2)
    return path


def test_fit_threads_give_the_same_cache(tmp_path, small_criteo, monkeypatch):
    monkeypatch.setattr(_build, "_BLOCK_ROWS", 900)  # many blocks per field
    for threads in (1, 4):
        monkeypatch.setattr(_build, "FIT_THREADS", threads)
        prepare("criteo", str(small_criteo), str(tmp_path / f"t{threads}"), block_bytes=1 << 16)
    names = sorted(p.name for p in (tmp_path / "t1").iterdir() if p.suffix in (".npy", ".npz"))
    assert len(names) == 11
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "t1", tmp_path / "t4", names, shallow=False)
    assert (mismatch, errors) == ([], [])


def test_a_field_fit_error_is_raised_and_leaves_no_cache(tmp_path, small_criteo, monkeypatch):
    fit = _build._fit_field

    def failing(store, name, *args):
        if name == "C7":
            raise OSError("disk full while fitting C7")
        return fit(store, name, *args)

    monkeypatch.setattr(_build, "_fit_field", failing)
    with pytest.raises(OSError, match="fitting C7"):
        prepare("criteo", str(small_criteo), str(tmp_path / "cache"), block_bytes=1 << 16)
    assert not (tmp_path / "cache").exists()
    assert _reader_threads() == 0


def test_blocks_written_by_threads_land_in_split_order(tmp_path, monkeypatch):
    """A random split puts each split's rows all over each block (no contiguous runs): written by 3 threads in
    blocks of 70 rows, each split's arrays hold its rows in file order, as numpy selects them from the source."""
    import numpy as np

    from mlet_jax.data import splits

    rng = np.random.default_rng(4)
    n = 1000
    label, x, cat = rng.integers(0, 2, n), rng.normal(size=n).round(3), rng.integers(0, 50, n)
    src = tmp_path / "t.csv"
    src.write_text("y,x,c\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(label, x, cat, strict=True)))
    monkeypatch.setattr(_build, "_BLOCK_ROWS", 70)
    opts = dict(label="y", numeric=["x"], categorical=["c"], test_fraction=0.2, valid_fraction=0.1, seed=3)
    caches = {}
    for threads in (1, 3):
        monkeypatch.setattr(_build, "FIT_THREADS", threads)
        caches[threads] = prepare("table", str(src), str(tmp_path / f"t{threads}"), **opts)
    codes = splits.random_split(n, 0.2, 0.1, 3)
    assert 0 < (codes == 1).sum() < (codes == 2).sum() < (codes == 0).sum()
    for i, nm in enumerate(("train", "valid", "test")):
        for threads, ds in caches.items():
            got = getattr(ds, nm)
            np.testing.assert_array_equal(got.label, label[codes == i].astype(np.float32), err_msg=f"{nm} {threads}")
            np.testing.assert_array_equal(got.dense[:, 0], x[codes == i].astype(np.float32))
    names = sorted(p.name for p in (tmp_path / "t1").iterdir() if p.suffix in (".npy", ".npz"))
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "t1", tmp_path / "t3", names, shallow=False)
    assert (mismatch, errors) == ([], []) and len(match) >= 9


def test_a_block_write_error_is_raised_and_leaves_no_cache(tmp_path, small_criteo, monkeypatch):
    monkeypatch.setattr(_build, "_BLOCK_ROWS", 900)
    write_at, calls = _build._Rows.write_at, []

    def failing(self, row, rows):
        calls.append(row)
        if len(calls) == 7:
            raise OSError("disk full while writing")
        return write_at(self, row, rows)

    monkeypatch.setattr(_build._Rows, "write_at", failing)
    with pytest.raises(OSError, match="disk full while writing"):
        prepare("criteo", str(small_criteo), str(tmp_path / "cache"), block_bytes=1 << 16)
    assert not (tmp_path / "cache").exists() and not list(tmp_path.iterdir())
