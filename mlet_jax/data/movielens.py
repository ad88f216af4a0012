"""MovieLens 100K (``u.data``, ``u.user``, ``u.item``) and 1M (``ratings.dat``, ``users.dat``, ``movies.dat``).

100K: ``u.data`` tab-separated user, item, rating, timestamp; ``u.user`` pipe-separated user|age|gender|occupation|
zip; ``u.item`` pipe-separated in latin-1: id|title|release date|video release date|IMDb URL|19 genre flags.
1M: ``::``-separated ``ratings.dat`` (user, movie, rating, timestamp), ``users.dat`` (user, *gender, age*,
occupation, zip: note the order), ``movies.dat`` (id, "Title (Year)", genres joined by ``|``), latin-1.

Label: rating >= ``label_threshold`` (4). A rating must be a number on the 1-5 scale of 100K and 1M (``nan``,
``inf``, ``-1`` or ``99`` is a bad row: an error naming file and line, or skipped with ``on_bad_row="skip"``).
Fields: user, item, age, gender, occupation, zip (first ``zip_prefix``
characters), genres (a bag field, pooled by ``genre_pooling``), year (release year). No dense features.
Splits: ``split="random"`` (seeded) or ``"timestamp"`` (the latest ratings are the test set).
"""

from __future__ import annotations

import codecs
import os

import numpy as np
import polars as pl

from mlet_jax.data import splits
from mlet_jax.data._build import Field, RawStore, check_splits, finalize, string_keys
from mlet_jax.data._text import Block, check_file, split_lines
from mlet_jax.data.errors import BadRows, DataFormatError

DEFAULTS = {"label_threshold": 4.0, "split": "random", "test_fraction": 0.1, "valid_fraction": 0.0, "seed": 0,
            "zip_prefix": 2, "genre_pooling": "sum", "encoding": "latin-1", "min_count": 1, "hash_buckets": None,
            "vocab_split": "train", "on_bad_row": "error"}
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western")
RATING_SCALE = (1.0, 5.0)
FILES = {"100k": ("u.data", "u.user", "u.item"), "1m": ("ratings.dat", "users.dat", "movies.dat")}


def variant(data_dir: str) -> str:
    for name, files in FILES.items():
        if os.path.exists(os.path.join(data_dir, files[0])):
            return name
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: not a folder (MovieLens needs the folder of u.data or ratings.dat)")
    raise FileNotFoundError(f"{data_dir}: neither u.data (MovieLens 100K) nor ratings.dat (1M) in this folder")


def input_files(data_dir: str, options: dict) -> list[str]:
    paths = [os.path.join(data_dir, f) for f in FILES[variant(data_dir)]]
    for p in paths:
        check_file(p)
    return paths


def _read(path: str, sep: str, names: list[str], encoding: str, bad: BadRows) -> tuple[pl.DataFrame, np.ndarray]:
    """Whole file -> all-string columns plus the line number of each row (bad field counts checked)."""
    check_file(path)
    try:
        codecs.lookup(encoding)
    except LookupError as e:
        raise DataFormatError(path, f"unknown encoding {encoding!r}") from e
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataFormatError(path, f"cannot decode byte {raw[e.start:e.start + 1]!r} as {encoding} "
                                    f"(pass encoding=...)", line=line) from e
    data = text.encode("utf-8").replace(b"\r\n", b"\n")
    if sep == "::":
        data, sep = data.replace(b"::", b"\x1f"), "\x1f"
    if not data.endswith(b"\n"):
        data += b"\n"
    lines = split_lines(Block(data, 1, len(raw)), path, sep.encode(), len(names), bad)
    if not len(lines.line_no):
        raise DataFormatError(path, "no data rows", line=1)
    df = pl.read_csv(lines.data, has_header=False, separator=sep, quote_char=None, new_columns=names,
                     schema=dict.fromkeys(names, pl.String))
    return df, lines.line_no


def _ints(df: pl.DataFrame, cols: list[str], path: str, line_no: np.ndarray, bad: BadRows,
          dtype=pl.Int64) -> tuple[pl.DataFrame, np.ndarray]:
    """Parse integer (or float) columns; returns the parsed frame and the bad-row mask."""
    out = df.with_columns(*[pl.col(c).str.strip_chars().cast(dtype, strict=False) for c in cols])
    rows_bad = np.zeros(len(df), bool)
    for c in cols:
        f = out[c].is_null().to_numpy()
        kind = "an integer" if dtype == pl.Int64 else "a number"
        bad.check(path, f, line_no, c, "{value!r} is not " + kind, df[c])
        rows_bad |= f
    return out, rows_bad


def _items_100k(path, enc, bad):
    flags = [f"g{i}" for i in range(len(GENRES_100K))]
    df, ln = _read(path, "|", ["item", "title", "release", "video", "url", *flags], enc, bad)
    df, rb = _ints(df, ["item"], path, ln, bad)
    fl = df.select(pl.col(flags).str.strip_chars().cast(pl.Int8, strict=False))
    for i, c in enumerate(flags):
        f = ~fl[c].is_in([0, 1]).fill_null(False).to_numpy()
        bad.check(path, f, ln, c, f"genre flag ({GENRES_100K[i]}) {{value!r}} is not 0 or 1", df[c])
        rb |= f
    keep = bad.drop(rb)
    flags_np = fl.fill_null(0).to_numpy().astype(bool)[keep]
    year = df["release"].str.extract(r"(\d{4})\s*$", 1)
    return df["item"].to_numpy()[keep], year.filter(pl.Series(keep)), flags_np, list(GENRES_100K)


def _items_1m(path, enc, bad):
    df, ln = _read(path, "::", ["item", "title", "genres"], enc, bad)
    df, rb = _ints(df, ["item"], path, ln, bad)
    keep = bad.drop(rb)
    df = df.filter(pl.Series(keep))
    year = df["title"].str.extract(r"\((\d{4})\)\s*$", 1)
    lists = df["genres"].fill_null("").str.split("|")
    names = sorted(set(lists.explode().drop_nulls().to_list()) - {""})
    ex = pl.DataFrame({"r": np.arange(len(df)), "g": lists}).explode("g").filter(pl.col("g") != "")
    flags = np.zeros((len(df), len(names)), bool)
    flags[ex["r"].to_numpy(), ex["g"].replace_strict(names, list(range(len(names))),
                                                     return_dtype=pl.Int64).to_numpy()] = True
    return df["item"].to_numpy(), year, flags, names


def build(data_dir: str, writer, *, progress: bool = False, **o) -> tuple:
    var = variant(data_dir)
    f_r, f_u, f_i = (os.path.join(data_dir, f) for f in FILES[var])
    enc, bad = o["encoding"], BadRows(o["on_bad_row"])
    # ratings
    sep = "\t" if var == "100k" else "::"
    rt, ln_r = _read(f_r, sep, ["user", "item", "rating", "timestamp"], enc, bad)
    rt, rb = _ints(rt, ["user", "item", "timestamp"], f_r, ln_r, bad)
    raw_rating = rt["rating"]
    rt2, rb2 = _ints(rt.select(pl.col("rating").cast(pl.String)), ["rating"], f_r, ln_r, bad, pl.Float64)
    rt = rt.with_columns(rt2["rating"])
    r = rt["rating"]
    lo, hi = RATING_SCALE
    f = ~(r.is_finite() & r.is_between(lo, hi)).fill_null(True).to_numpy() & ~rb2
    bad.check(f_r, f, ln_r, "rating", f"rating {{value!r}} is outside the MovieLens scale [{lo:g}, {hi:g}]",
              raw_rating)
    rb2 |= f
    # users (1M: gender before age)
    ucols = ["user", "age", "gender", "occupation", "zip"] if var == "100k" else \
        ["user", "gender", "age", "occupation", "zip"]
    us, ln_u = _read(f_u, "|" if var == "100k" else "::", ucols, enc, bad)
    us, ub = _ints(us, ["user"], f_u, ln_u, bad)
    us = us.filter(pl.Series(bad.drop(ub))).with_columns(pl.lit(True).alias("_known_user"))
    dup = us["user"].is_duplicated().to_numpy()
    if dup.any():
        raise DataFormatError(f_u, f"user id {us['user'][int(np.argmax(dup))]} appears twice", column="user")
    item_ids, year, flags, genre_names = (_items_100k if var == "100k" else _items_1m)(f_i, enc, bad)
    # join ratings -> users, items (by row position in the item table)
    items = pl.DataFrame({"item": item_ids, "item_row": np.arange(len(item_ids))})
    if items["item"].is_duplicated().any():
        raise DataFormatError(f_i, "an item id appears twice", column="item")
    j = rt.with_row_index("r").join(us, on="user", how="left").join(items, on="item", how="left").sort("r")
    f = j["_known_user"].is_null().to_numpy() & ~rb
    bad.check(f_r, f, ln_r, "user", f"user id {{value}} is not in {os.path.basename(f_u)}", j["user"])
    rb |= f
    f = j["item_row"].is_null().to_numpy() & ~rb
    bad.check(f_r, f, ln_r, "item", f"item id {{value}} is not in {os.path.basename(f_i)}", j["item"])
    rb |= f | rb2
    keep = bad.drop(rb)
    j = j.filter(pl.Series(keep))
    if len(j) == 0:
        raise DataFormatError(f_r, "no usable ratings")
    # bag of genres: the ids of the set flags, padded with -1
    width = max(1, int(flags.sum(1).max(initial=0)))
    order = np.argsort(~flags, axis=1, kind="stable")[:, :width]
    bag = np.where(np.take_along_axis(flags, order, 1), order, -1).astype(np.int32)
    irow = j["item_row"].to_numpy().astype(np.int64)
    cols = {"user": j["user"].to_numpy().astype(np.int64), "item": j["item"].to_numpy().astype(np.int64),
            "age": string_keys(j["age"].str.strip_chars()), "gender": string_keys(j["gender"].str.strip_chars()),
            "occupation": string_keys(j["occupation"].str.strip_chars()),
            "zip": string_keys(j["zip"].str.strip_chars().str.slice(0, int(o["zip_prefix"]))),
            "genres": bag[irow], "year": string_keys(year)[irow]}
    fields = [Field("user"), Field("item"), Field("age"), Field("gender"), Field("occupation"), Field("zip"),
              Field("genres", kind="direct", slots=width, vocab_size=max(1, len(genre_names))), Field("year")]
    store = RawStore(writer.file("_raw"), fields, [])
    label = (j["rating"].to_numpy() >= float(o["label_threshold"])).astype(np.float32)
    store.append(label, np.zeros((len(label), 0), np.float32), cols)
    store.close()
    n = store.n
    if o["split"] == "random":
        codes = splits.random_split(n, o["test_fraction"], o["valid_fraction"], o["seed"])
    else:
        codes = splits.ordered_split(j["timestamp"].to_numpy(), n, o["test_fraction"], o["valid_fraction"])
    check_splits(codes, label, f_r, ("test_fraction", o["test_fraction"]),
                 f" (label = rating >= label_threshold={o['label_threshold']:g})", o["valid_fraction"])
    schema, info = finalize(store, codes, writer, min_count=o["min_count"], hash_buckets=o["hash_buckets"],
                            vocab_split=o["vocab_split"], bag_pooling=o["genre_pooling"], progress=progress)
    return schema, info | {"rows": n, "variant": var, "genres": genre_names, **bad.summary()}
