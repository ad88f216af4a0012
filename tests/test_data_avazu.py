"""Avazu loader: header by name, hour -> hour of day and weekday, random split, gzip, bad input."""

import gzip

import numpy as np
import polars as pl
import pytest

from mlet_jax.data import DataFormatError, load_dataset
from mlet_jax.data._build import string_keys

HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
          "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")


def avazu_lines(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        day, hh = 21 + i % 9, int(rng.integers(0, 24))
        vals = [f"{int(rng.integers(0, 4)) * 0x9e3779b1 % 2**32:08x}" for _ in range(21)]
        # id is a uint64 that overflows int64, as in the real file
        out.append(f"{10000000000000000000 + i},{int(rng.random() < 0.2)},1410{day:02d}{hh:02d}," + ",".join(vals))
    return out


def write(path, lines, header=HEADER, gz=False):
    text = "\n".join([header, *lines]) + "\n"
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return str(path)


def load(path, tmp_path, **kw):
    return load_dataset("avazu", str(path), cache_dir=str(tmp_path / "cache"), **kw)


def test_fields_hour_weekday_and_dense_option(tmp_path):
    lines = avazu_lines(50)
    lines[0] = lines[0].split(",")[0] + ",1,14102123," + ",".join(lines[0].split(",")[3:])
    ds = load(write(tmp_path / "train", lines), tmp_path)
    ds.validate()
    s = ds.schema
    assert s.field_names[:2] == ("hour_of_day", "weekday") and s.field_names[2] == "C1" and "id" not in s.field_names
    assert s.num_fields == 2 + 21 and s.num_dense == 0
    assert (len(ds.train), len(ds.test)) == (45, 5)
    dense = load(write(tmp_path / "train", lines), tmp_path / "d", hour_dense=True)
    assert dense.schema.dense_names == ("hour",)
    hours = np.array([int(ln.split(",")[2][-2:]) for ln in lines], np.float32)
    assert hours[0] == 23  # 2014-10-21 23h
    got = np.concatenate([dense.train.dense[:, 0], dense.test.dense[:, 0]])
    np.testing.assert_allclose(np.sort(got), np.sort(hours / 23))
    # weekday: 2014-10-21 .. 29 are Tue..Wed; 9 distinct days -> 7 weekdays (+ OOV id 0)
    assert s.vocab_sizes[1] == 8


def test_random_split_seeded_disjoint_and_gzip(tmp_path):
    lines = avazu_lines(200, seed=1)
    a = load(write(tmp_path / "train", lines), tmp_path / "a", valid_fraction=0.1, seed=3)
    assert (len(a.train), len(a.valid), len(a.test)) == (160, 20, 20)
    b = load(write(tmp_path / "train.gz", lines, gz=True), tmp_path / "b", valid_fraction=0.1, seed=3)
    np.testing.assert_array_equal(a.test.ids, b.test.ids)
    # disjoint and complete: with one vocabulary for all rows, each row's ids identify it
    a, c = (load(write(tmp_path / "train", lines), tmp_path / f"v{s}", valid_fraction=0.1, seed=s,
                 vocab_split="all") for s in (3, 4))
    sets = {nm: [{tuple(r) for r in np.asarray(getattr(d, nm).ids)} for d in (a, c)] for nm in ("train", "valid",
                                                                                              "test")}
    for i in (0, 1):
        tr, va, te = (sets[nm][i] for nm in ("train", "valid", "test"))
        assert len(tr) + len(va) + len(te) == 200 and not (tr & va or tr & te or va & te)
    assert sets["test"][0] != sets["test"][1]  # another seed, another split
    assert set().union(*(sets[nm][0] for nm in sets)) == set().union(*(sets[nm][1] for nm in sets))


def test_min_count_and_hash(tmp_path):
    path = write(tmp_path / "train", avazu_lines(100, seed=2))
    ds = load(path, tmp_path, min_count=1000)
    assert all(v == 1 for v in ds.schema.vocab_sizes)  # everything rare -> OOV only
    h = load(path, tmp_path / "h", hash_buckets={"device_ip": 3})
    assert h.schema.vocab_sizes[h.schema.field_names.index("device_ip")] == 3


@pytest.mark.parametrize("bad_hour", ["14102124", "141021", "14133100", "1410x100", ""])
def test_bad_hour(tmp_path, bad_hour):
    lines = avazu_lines(20)
    p = lines[6].split(",")
    p[2] = bad_hour
    lines[6] = ",".join(p)
    path = write(tmp_path / "train", lines)
    with pytest.raises(DataFormatError, match=r"train, line 8, column 'hour': bad hour"):
        load(path, tmp_path)
    assert load(path, tmp_path, on_bad_row="skip").meta["skipped_rows"] == 1


def test_bad_label_columns_header_and_gzip(tmp_path):
    lines = avazu_lines(20)
    lines[2] = lines[2].replace(",0,1410", ",3,1410", 1).replace(",1,1410", ",3,1410", 1)
    with pytest.raises(DataFormatError, match=r"line 4, column 'click': label '3'"):
        load(write(tmp_path / "train", lines), tmp_path)
    lines = avazu_lines(20)
    lines[9] += ",extra"
    with pytest.raises(DataFormatError, match=r"line 11: expected 24 fields"):
        load(write(tmp_path / "train", lines), tmp_path)
    with pytest.raises(DataFormatError, match=r"line 1, column 'click': missing label column"):
        load(write(tmp_path / "test", avazu_lines(5), header=HEADER.replace("click,", "")), tmp_path)
    with pytest.raises(DataFormatError, match="no data rows"):
        load(write(tmp_path / "train", []), tmp_path)
    data = gzip.compress(("\n".join([HEADER, *avazu_lines(300)]) + "\n").encode())
    (tmp_path / "train.gz").write_bytes(data[:-20])
    with pytest.raises(DataFormatError, match="train.gz.*truncated or corrupt gzip"):
        load(tmp_path / "train.gz", tmp_path)


def test_wrong_field_counts_that_balance_out_and_a_quoted_or_empty_value(tmp_path):
    """The quick read (pyarrow, field counts right in total) refuses a long plus a short line like the checked one;
    quotes stay part of a value and an empty value is missing, as in the checked read."""
    lines = avazu_lines(40, seed=5)
    lines[3] += ",x"
    lines[7] = lines[7].rsplit(",", 1)[0]
    path = write(tmp_path / "train", lines)
    assert open(path, "rb").read().count(b",") == 23 * open(path, "rb").read().count(b"\n")
    with pytest.raises(DataFormatError, match=r"train, line 5: expected 24 fields.*found 25"):
        load(path, tmp_path)
    assert load(path, tmp_path, on_bad_row="skip").meta["skipped_rows"] == 2
    lines = avazu_lines(40, seed=5)
    p = lines[3].split(",")
    p[5], p[7] = '"ab"', ""
    lines[3] = ",".join(p)
    load(write(tmp_path / "train", lines), tmp_path / "q", vocab_split="all")
    voc = np.load(tmp_path / "q" / "cache" / "vocab.npz")
    assert string_keys(pl.Series(['"ab"']))[0] in voc["site_id"]
    assert -1 in voc["site_category"]
