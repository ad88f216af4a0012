"""Criteo-Kaggle loader: format quirks, DLRM preprocessing, day split, vocabularies, cache, bad input."""

import gzip
import os

import numpy as np
import pytest

from mlet_jax.data import DataFormatError, load_dataset, splits
from mlet_jax.data import cache as cache_mod


def criteo_lines(n, seed=0, vocab=6):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rng.random()  # was the label draw; labels now alternate so that every small split has both classes
        ints = [str(int(rng.integers(-3, 40))) if rng.random() > 0.25 else "" for _ in range(13)]
        cats = [f"{int(rng.integers(0, vocab)) * 0x1f3a5b7:08x}" if rng.random() > 0.15 else "" for _ in range(26)]
        out.append("\t".join([str(i % 2)] + ints + cats))
    return out


def write(path, lines, end="\n"):
    with open(path, "w", newline="") as fh:
        fh.write(end.join(lines) + end)
    return str(path)


def load(path, tmp_path, **kw):
    return load_dataset("criteo", str(path), cache_dir=str(tmp_path / "cache"), **kw)


def test_preprocessing_matches_dlrm_rules(tmp_path):
    lines = ["1\t5\t\t-2\t0" + "\t" * 9 + "\t" + "\t".join(["0000000a"] * 13 + [""] * 13),
             "0\t\t3\t7\t1" + "\t" * 9 + "\t" + "\t".join(["FFFFFFFF"] * 26)] + criteo_lines(68)
    ds = load(write(tmp_path / "train.txt", lines), tmp_path)
    ds.validate()
    tr = ds.train
    np.testing.assert_allclose(tr.dense[0, :4], np.log1p([5, 0, 0, 0]).astype(np.float32))
    np.testing.assert_allclose(tr.dense[1, :4], np.log1p([0, 3, 7, 1]).astype(np.float32))
    assert tr.label[0] == 1 and tr.label[1] == 0
    # upper-case hex parses; empty is its own category, distinct from every value
    assert tr.ids[0, 0] != tr.ids[0, 20] and tr.ids[0, 13] == tr.ids[0, 13]
    assert ds.schema.field_names[0] == "C1" and ds.schema.dense_names[-1] == "I13"
    for f, c in enumerate(ds.id_counts):
        assert c.sum() == len(tr) and c[0] == 0  # min_count 1, vocabulary from train: no OOV in train
        assert (np.bincount(tr.ids[:, f], minlength=len(c)) == c).all()


def test_day_split_sizes_and_order(tmp_path):
    n = 103
    lines = criteo_lines(n, seed=1)
    lines = [f"{i % 2}" + ln[1:] for i, ln in enumerate(lines)]
    ds = load(write(tmp_path / "train.txt", lines), tmp_path)
    per = n // 7
    assert len(ds.train) == n - per and len(ds.test) == -(-per // 2) and len(ds.valid) == per // 2
    codes = splits.criteo_days(n)
    # rows keep file order: train = first 6 days, test = first half of day 7
    assert (codes[: n - per] == splits.TRAIN).all()
    np.testing.assert_array_equal(ds.test.label, np.arange(n - per, n - per + len(ds.test)) % 2)
    np.testing.assert_array_equal(ds.valid.label, np.arange(n - len(ds.valid), n) % 2)


def test_min_count_oov_and_hashing(tmp_path):
    path = write(tmp_path / "train.txt", criteo_lines(140, seed=2, vocab=40))
    full = load(path, tmp_path)
    rare = load(path, tmp_path, min_count=5)
    for f in range(26):
        c = full.id_counts[f]
        kept = int((c[1:] >= 5).sum())
        assert rare.schema.vocab_sizes[f] == kept + 1
        assert rare.id_counts[f][0] == c[1:][c[1:] < 5].sum()  # rare ids share OOV id 0
        assert (rare.id_counts[f][1:] >= 5).all()
    hashed = load(path, tmp_path, hash_buckets=7)
    assert hashed.schema.vocab_sizes == (7,) * 26
    raw = np.array([[int(v, 16) if v else -1 for v in ln.split("\t")[14:]] for ln in criteo_lines(140, 2, 40)])
    expect = np.where(raw >= 0, raw % 7, 0)[: len(hashed.train)]
    np.testing.assert_array_equal(hashed.train.ids, expect)


def test_test_ids_unseen_in_train_are_oov(tmp_path):
    lines = criteo_lines(70, seed=3)
    lines[-1] = "\t".join(lines[-1].split("\t")[:14] + ["abcdef12"] * 26)
    ds = load(write(tmp_path / "train.txt", lines), tmp_path)
    assert (ds.valid.ids[-1] == 0).all()
    ds_all = load(write(tmp_path / "train.txt", lines), tmp_path, vocab_split="all")
    assert (ds_all.valid.ids[-1] > 0).all()


def test_quirks_crlf_no_final_newline_blank_lines_gzip(tmp_path):
    lines = criteo_lines(70, seed=4)
    ref = load(write(tmp_path / "a.txt", lines), tmp_path / "a")
    (tmp_path / "b.txt").write_bytes(("\r\n".join(lines[:30]) + "\r\n\r\n" + "\n".join(lines[30:])).encode())
    other = load(tmp_path / "b.txt", tmp_path / "b")
    with gzip.open(tmp_path / "c.txt", "wt") as fh:  # gzip detected by magic bytes, not the name
        fh.write("\n".join(lines))
    gz = load(tmp_path / "c.txt", tmp_path / "c", block_bytes=1000)
    for ds in (other, gz):
        for nm in ("train", "valid", "test"):
            a, b = getattr(ref, nm), getattr(ds, nm)
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_array_equal(a.dense, b.dense)


def test_small_blocks_give_identical_cache(tmp_path):
    path = write(tmp_path / "train.txt", criteo_lines(90, seed=5))
    a = load(path, tmp_path / "a")
    b = load(path, tmp_path / "b", block_bytes=777)
    np.testing.assert_array_equal(a.train.ids, b.train.ids)
    assert a.meta["options"] == b.meta["options"]  # block size is not part of the cache key


@pytest.mark.parametrize("col,value,needle", [
    (0, "2", "label '2' is not 0 or 1"),
    (0, "", "missing label"),
    (3, "12x", "'12x' is not an integer"),
    (3, "1.5", "'1.5' is not an integer"),
    (20, "68fd1z64", "malformed hex"),
    (20, "123456789", "malformed hex"),
    (20, "-1a", "malformed hex"),
])
def test_bad_values_name_file_line_column(tmp_path, col, value, needle):
    lines = criteo_lines(30, seed=6)
    parts = lines[17].split("\t")
    parts[col] = value
    lines[17] = "\t".join(parts)
    path = write(tmp_path / "train.txt", lines)
    with pytest.raises(DataFormatError) as e:
        load(path, tmp_path)
    msg = str(e.value)
    colname = ("label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)])[col]
    assert "train.txt" in msg and "line 18" in msg and repr(colname) in msg and needle in msg
    assert not os.path.exists(tmp_path / "cache")
    ds = load(path, tmp_path, on_bad_row="skip")
    assert ds.meta["skipped_rows"] == 1 and ds.meta["rows"] == 29 and "line 18" in ds.meta["examples"][0]


@pytest.mark.parametrize("edit", ["short", "long"])
def test_wrong_column_count(tmp_path, edit):
    lines = criteo_lines(30, seed=7)
    lines[4] = lines[4].rsplit("\t", 1)[0] if edit == "short" else lines[4] + "\tx"
    path = write(tmp_path / "train.txt", lines)
    with pytest.raises(DataFormatError, match=r"line 5: expected 40 fields.*found (39|41)"):
        load(path, tmp_path)
    assert load(path, tmp_path, on_bad_row="skip").meta["skipped_rows"] == 1


@pytest.mark.parametrize("short", ["field", "blank"])
def test_wrong_column_counts_that_balance_out(tmp_path, short):
    """A block whose tab count is right in total still has every line checked: one line too long and one too short
    (or a blank line and a line 39 fields too long) are found, the first one named."""
    lines = criteo_lines(30, seed=7)
    lines[4] = lines[4] + "\tx" if short == "field" else lines[4] + "\tx" * 39
    if short == "field":
        lines[9] = lines[9].rsplit("\t", 1)[0]
    else:
        lines.insert(9, "")
    path = write(tmp_path / "train.txt", lines)
    assert open(path, "rb").read().count(b"\t") == 39 * open(path, "rb").read().count(b"\n")
    with pytest.raises(DataFormatError, match=r"line 5: expected 40 fields.*found (41|79)"):
        load(path, tmp_path)
    ds = load(path, tmp_path, on_bad_row="skip")
    assert ds.meta["skipped_rows"] == (2 if short == "field" else 1) and ds.meta["rows"] == 28 + (short == "blank")
    ref = load(write(tmp_path / "ref.txt", [ln for i, ln in enumerate(criteo_lines(30, seed=7)) if i not in (4, 9)]
                     if short == "field" else [ln for i, ln in enumerate(criteo_lines(30, seed=7)) if i != 4]),
               tmp_path / "r")
    np.testing.assert_array_equal(ds.train.ids, ref.train.ids)


def test_empty_missing_and_truncated_gzip(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load(tmp_path / "nope.txt", tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty.txt.*empty"):
        load(tmp_path / "empty.txt", tmp_path)
    data = gzip.compress(("\n".join(criteo_lines(200, seed=8)) + "\n").encode())
    (tmp_path / "t.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="t.gz.*truncated or corrupt gzip"):
        load(tmp_path / "t.gz", tmp_path, block_bytes=2000)
    assert not os.path.exists(tmp_path / "cache")


def test_cache_reuse_and_invalidation(tmp_path):
    path = write(tmp_path / "train.txt", criteo_lines(70, seed=9))
    a = load(path, tmp_path)
    built = a.meta["build_seconds"]
    assert isinstance(a.train.ids, np.memmap)
    stamp = os.stat(tmp_path / "cache" / "schema.json").st_mtime_ns
    b = load(path, tmp_path)  # same options: reused, not rebuilt
    assert os.stat(tmp_path / "cache" / "schema.json").st_mtime_ns == stamp and b.meta["build_seconds"] == built
    c = load(path, tmp_path, min_count=3)  # other options: rebuilt
    assert c.meta["options"]["min_count"] == 3
    d = load_dataset("criteo", str(tmp_path / "cache"))  # a prepared cache opens directly
    assert d.meta["options"]["min_count"] == 3
    write(path, criteo_lines(77, seed=9))  # changed input: rebuilt
    os.utime(path, ns=(1, 1))
    assert len(load(path, tmp_path).train) == 66


def test_interrupted_write_leaves_no_valid_cache(tmp_path, monkeypatch):
    path = write(tmp_path / "train.txt", criteo_lines(70, seed=10))
    good = load(path, tmp_path, min_count=1)
    real_commit = cache_mod.CacheWriter.commit

    def boom(self, meta):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.CacheWriter, "commit", boom)
    with pytest.raises(KeyboardInterrupt):
        load(path, tmp_path, min_count=2)
    # the old complete cache is untouched, no temp directory is left, nothing half-written looks valid
    assert cache_mod.read_meta(str(tmp_path / "cache"))["options"]["min_count"] == 1
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p] == []
    np.testing.assert_array_equal(load(path, tmp_path).train.ids, good.train.ids)
    # a process killed mid-write leaves a temp directory with its (no longer held) lock file: it never looks valid
    # and the next build removes it; a folder of the same name without our lock file is not ours and stays
    stale, other = tmp_path / "cache2.tmp-999999999-0", tmp_path / "cache2.tmp-999999998-0"
    for d in (stale, other):
        d.mkdir()
        (d / "train_ids.npy").write_bytes(b"partial")
    (stale / cache_mod.LOCK).write_text("999999999")
    assert cache_mod.read_meta(str(stale)) is None
    monkeypatch.setattr(cache_mod.CacheWriter, "commit", real_commit)
    load_dataset("criteo", path, cache_dir=str(tmp_path / "cache2"))
    assert not stale.exists() and (other / "train_ids.npy").read_bytes() == b"partial"


def test_cli_prepare(tmp_path, capsys):
    from mlet_jax.data.__main__ import main

    path = write(tmp_path / "train.txt", criteo_lines(70, seed=11))
    assert main(["prepare", "criteo", "--input", path, "--out", str(tmp_path / "out"), "--min-count", "2",
                 "--no-progress"]) == 0
    assert '"train": 60' in capsys.readouterr().out
    ds = load_dataset("criteo", str(tmp_path / "out"))
    assert ds.meta["options"]["min_count"] == 2
    assert main(["prepare", "criteo", "--input", path, "--out", str(tmp_path / "o2"), "--zip-prefix", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --zip-prefix: criteo does not take it" in err
