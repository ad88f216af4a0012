"""MovieLens 100K and 1M loaders: separators, latin-1, genre bags, label threshold, splits, bad input."""

import numpy as np
import pytest

from mlet_jax.data import DataFormatError, load_dataset

ITEMS_100K = [
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "2|Les Misérables (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0",
    "3|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0",
]
USERS_100K = ["1|24|M|technician|85711", "2|53|F|other|94043", "3|23|M|writer|T8H1N"]


def ml100k(d, ratings=None, items=None, users=None):
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    if ratings is None:
        ratings = [f"{rng.integers(1, 4)}\t{rng.integers(1, 4)}\t{rng.integers(1, 6)}\t{880000000 + i}"
                   for i in range(40)]
    (d / "u.data").write_text("\n".join(ratings) + "\n")
    (d / "u.user").write_text("\n".join(users or USERS_100K) + "\n")
    (d / "u.item").write_bytes(("\n".join(items or ITEMS_100K) + "\n").encode("latin-1"))
    return str(d)


def ml1m(d):
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    (d / "ratings.dat").write_text("\n".join(
        f"{rng.integers(1, 3)}::{[1, 2, 3][i % 3]}::{rng.integers(1, 6)}::{978300000 + i}" for i in range(30)) + "\n")
    (d / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072-1234\n")
    (d / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                   "2::Misérables, Les (1995)::Drama|Musical\n"
                                   "3::City of Lost Children, The (Cité des enfants perdus, La) (1995)"
                                   "::Adventure|Sci-Fi\n"
                                   .encode("latin-1"))
    return str(d)


def load(d, tmp_path, **kw):
    return load_dataset("movielens", d, cache_dir=str(tmp_path / "cache"), **kw)


def test_100k_fields_bags_and_label(tmp_path):
    d = ml100k(tmp_path / "ml-100k")
    ds = load(d, tmp_path, split="timestamp", test_fraction=0.1)  # timestamps rise: train is the first 36 lines
    ds.validate()
    s = ds.schema
    assert s.field_names == ("user", "item", "age", "gender", "occupation", "zip", "genres", "year")
    assert s.bag_sizes == (1, 1, 1, 1, 1, 1, 3, 1) and s.vocab_sizes[6] == 19 and s.num_dense == 0
    ratings = np.loadtxt(tmp_path / "ml-100k" / "u.data", dtype=np.int64)[:36]
    assert len(ds.train) == 36
    np.testing.assert_array_equal(ds.train.label, (ratings[:, 2] >= 4).astype(np.float32))
    g = ds.train.ids[:, 6:9]
    expect = {1: [3, 4, 5], 2: [8, -1, -1], 3: [0, -1, -1]}  # Animation, Children's, Comedy / Drama / unknown
    for row, item in zip(g, ratings[:, 1], strict=True):
        assert list(row) == expect[item]
    assert ds.id_counts[6].sum() == (g >= 0).sum()
    ds3 = load(d, tmp_path / "t3", split="timestamp", test_fraction=0.1, label_threshold=3, genre_pooling="mean")
    np.testing.assert_array_equal(ds3.train.label, (ratings[:, 2] >= 3).astype(np.float32))
    assert ds3.schema.bag_pooling == "mean"
    # the movie without a release date gets the missing year; the Canadian zip is a category like any other
    year = {int(i): int(y) for i, y in zip(ratings[:, 1], ds.train.ids[:, 9], strict=True)}
    assert year[1] == year[2] != year[3]
    zips = {int(u): int(z) for u, z in zip(ratings[:, 0], ds.train.ids[:, 5], strict=True)}
    assert len(set(zips.values())) == len(zips)


def test_1m_double_colon_gender_before_age_and_timestamp_split(tmp_path):
    d = ml1m(tmp_path / "ml-1m")
    ds = load(d, tmp_path, split="timestamp", test_fraction=0.2, valid_fraction=0.1)
    ds.validate()
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (21, 3, 6)
    s = ds.schema
    assert s.vocab_sizes[s.field_names.index("genres")] == 7  # distinct genre names in movies.dat
    assert s.vocab_sizes[s.field_names.index("gender")] == 3 and s.vocab_sizes[s.field_names.index("age")] == 3
    r = np.array([ln.split("::") for ln in (tmp_path / "ml-1m" / "ratings.dat").read_text().split()], np.int64)
    np.testing.assert_array_equal(ds.test.label, (r[-6:, 2] >= 4).astype(np.float32))  # the latest ratings
    rnd = load(d, tmp_path / "r", split="random", test_fraction=0.2, seed=1)
    assert (len(rnd.train), len(rnd.test)) == (24, 6) and rnd.valid is None


def test_bad_inputs(tmp_path):
    d = tmp_path / "ml"
    with pytest.raises(DataFormatError, match=r"u.data, line 2, column 'rating': 'x' is not a number"):
        load(ml100k(d, ratings=["1\t1\t5\t1", "1\t2\tx\t2"]), tmp_path)
    with pytest.raises(DataFormatError, match=r"u.data, line 2: expected 4 fields"):
        load(ml100k(d, ratings=["1\t1\t5\t1", "1\t2\t5"]), tmp_path)
    with pytest.raises(DataFormatError, match=r"u.data, line 1, column 'item': item id 9 is not in u.item"):
        load(ml100k(d, ratings=["1\t9\t5\t1"]), tmp_path)
    good = ["1\t1\t5\t2", "2\t2\t1\t3", "1\t2\t5\t4", "2\t1\t2\t5"]
    ok = load(ml100k(d, ratings=["1\t9\t5\t1", *good]), tmp_path, on_bad_row="skip", split="timestamp",
              test_fraction=0.5)
    assert ok.meta["skipped_rows"] == 1 and (len(ok.train), len(ok.test)) == (2, 2)
    with pytest.raises(DataFormatError, match=r"u.item, line 2: cannot decode"):
        load(ml100k(d), tmp_path, encoding="utf-8")
    with pytest.raises(ValueError, match=r"encoding must be a text encoding .*, got 'klingon'"):
        load(ml100k(d), tmp_path, encoding="klingon")
    items = list(ITEMS_100K)
    items[1] = "2|Les Misérables (1995)|01-Jan-1995||http://x|" + "|".join("7" if i == 8 else "0" for i in range(19))
    with pytest.raises(DataFormatError, match=r"u.item, line 2, column 'g8': genre flag \(Drama\) '7'"):
        load(ml100k(d, items=items), tmp_path)
    (d / "u.user").write_text("")
    with pytest.raises(DataFormatError, match=r"u.user.*empty"):
        load(str(d), tmp_path)
    with pytest.raises(FileNotFoundError, match="neither u.data"):
        load(str(tmp_path), tmp_path)
