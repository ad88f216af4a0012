"""Any table (CSV / Parquet) and the .npz arrays format; registry dispatch."""

import numpy as np
import polars as pl
import pytest

from mlet_jax.data import DataFormatError, load_dataset


def frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    rng.integers(0, 2, n)  # was the label draw: labels alternate so that every small split has both classes
    return pl.DataFrame({"y": np.arange(n) % 2, "city": rng.choice(["a", "b, c", "é"], n),
                         "code": rng.integers(0, 5, n), "x": rng.normal(size=n).round(3),
                         "unused": np.arange(n)})


OPTS = {"label": "y", "categorical": ["city", "code"], "numeric": ["x"]}


def load(path, tmp_path, **kw):
    return load_dataset("table", str(path), cache_dir=str(tmp_path / "cache"), **{**OPTS, **kw})


def test_csv_and_parquet_agree(tmp_path):
    df = frame()
    df.write_csv(tmp_path / "t.csv")  # "b, c" is quoted: the separator inside quotes is data
    df.write_parquet(tmp_path / "t.parquet")
    a = load(tmp_path / "t.csv", tmp_path / "a", split="sequential", test_fraction=0.2, valid_fraction=0.1)
    b = load(tmp_path / "t.parquet", tmp_path / "b", split="sequential", test_fraction=0.2, valid_fraction=0.1)
    a.validate()
    assert (len(a.train), len(a.valid), len(a.test)) == (42, 6, 12)
    assert a.schema.field_names == ("city", "code") and a.schema.dense_names == ("x",)
    for nm in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, nm).ids, getattr(b, nm).ids)
        np.testing.assert_allclose(getattr(a, nm).dense[:, 0], getattr(b, nm).dense[:, 0])
    np.testing.assert_array_equal(a.test.label, df["y"].to_numpy()[-12:])  # sequential: file order
    assert a.schema.vocab_sizes == (4, 6)
    r = load(tmp_path / "t.csv", tmp_path / "r", log1p=True, label_threshold=1)
    assert (r.train.dense >= 0).all()


@pytest.mark.filterwarnings("ignore::mlet_jax.data.registry.CacheRebuildWarning")  # the file is rewritten
def test_table_bad_input(tmp_path):
    df = frame(20)
    p = tmp_path / "t.csv"
    df.write_csv(p)
    with pytest.raises(DataFormatError, match=r"line 1, column 'clicked': missing label column"):
        load(p, tmp_path, label="clicked")
    lines = p.read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split(",")[0], "2", 1)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"t.csv, row 5, column 'y': label '2' is not 0 or 1"):
        load(p, tmp_path)
    assert load(p, tmp_path, on_bad_row="skip").meta["skipped_rows"] == 1
    lines[5] = "1,a,3,notanumber,5"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"row 5, column 'x': 'notanumber' is not a number"):
        load(p, tmp_path)
    lines[5] = "1,a,3"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"t.csv, line 6: expected 5 fields, found 3"):
        load(p, tmp_path)
    assert load(p, tmp_path, on_bad_row="skip").meta["skipped_rows"] == 1
    with pytest.raises(ValueError, match=r"encoding must be a text encoding"):
        load(p, tmp_path, encoding="klingon")
    p.write_bytes(b"y,city,code,x\n1,\xff\xfe,1,2\n")
    with pytest.raises(DataFormatError, match=r"t.csv.*(UTF8|utf-8|UTF-8)"):
        load(p, tmp_path)
    with pytest.raises(TypeError, match="unknown option"):
        load(p, tmp_path, min_cuont=3)


def write_npz(prefix, n=50, seed=0, **override):
    rng = np.random.default_rng(seed)
    vocab = np.array([5, 3, 7], np.int64)
    arrs = {"dense": rng.random((n, 2)).astype(np.float32),
            "sparse": (rng.random((n, 3)) * vocab).astype(np.int32), "vocab": vocab,
            "label": (rng.random(n) < 0.3).astype(np.float32), "prob": rng.random(n).astype(np.float32)}
    arrs.update(override)
    np.savez(prefix, **arrs)


def test_arrays_format(tmp_path):
    pre = str(tmp_path / "cl")
    write_npz(pre + "_train.npz")
    write_npz(pre + "_test.npz", n=20, seed=1)
    ds = load_dataset("arrays", pre)
    ds.validate()
    assert ds.schema.vocab_sizes == (5, 3, 7) and ds.schema.num_dense == 2 and len(ds.test) == 20
    assert [c.sum() for c in ds.id_counts] == [50, 50, 50]
    v = load_dataset("arrays", pre, valid_fraction=0.2)
    assert (len(v.train), len(v.valid)) == (40, 10)
    bad = {"sparse": np.full((50, 3), 6, np.int32)}
    write_npz(pre + "_test.npz", **bad)
    with pytest.raises(DataFormatError, match=r"cl_test.npz, row 0, column 'sparse': sparse field 0: id 6 outside"):
        load_dataset("arrays", pre)
    write_npz(pre + "_test.npz", label=np.full(50, 2, np.float32))
    with pytest.raises(DataFormatError, match=r"cl_test.npz, row 0, column 'label'"):
        load_dataset("arrays", pre)
    write_npz(pre + "_test.npz", dense=np.zeros((49, 2), np.float32))
    with pytest.raises(DataFormatError, match="dense has 49 rows but label has 50"):
        load_dataset("arrays", pre)
    np.savez(pre + "_test.npz", dense=np.zeros((3, 2)))
    with pytest.raises(DataFormatError, match=r"missing array\(s\) \['sparse', 'vocab', 'label'\]"):
        load_dataset("arrays", pre)
    (tmp_path / "cl_test.npz").write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty"):
        load_dataset("arrays", pre)
    with pytest.raises(FileNotFoundError, match="nope_train.npz"):
        load_dataset("arrays", str(tmp_path / "nope"))


def test_registry_dispatch(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", str(tmp_path))
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("criteo")
