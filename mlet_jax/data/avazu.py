"""Avazu CTR ``train`` (CSV with a header, plain or gzip).

Header ``id,click,hour,C1,banner_pos,site_id,...,C21``; columns are found by name. Label ``click`` (0/1); ``id`` is
dropped; ``hour`` (YYMMDDHH) becomes two fields, hour of day and weekday, and optionally one dense feature (hour of
day / 23, ``hour_dense=True``) for models that need a dense input. Every other column is categorical (keyed by a
stable hash of its string) with optional ``min_count`` / ``hash_buckets``. Split: random 90/10 train/test with
``seed``; ``valid_fraction`` carves a validation split out of the rows (fractions are of all rows).
"""

from __future__ import annotations

import os

import numpy as np
import polars as pl

from mlet_jax.data import splits
from mlet_jax.data._build import Field, RawStore, _bar, check_splits, finalize, parse_text_blocks, string_keys
from mlet_jax.data._text import BLOCK_BYTES, Lines, RaggedLines, check_file, iter_blocks, quick_lines, split_lines
from mlet_jax.data.errors import BadRows, DataFormatError

DEFAULTS = {"min_count": 1, "hash_buckets": None, "vocab_split": "train", "test_fraction": 0.1,
            "valid_fraction": 0.0, "seed": 0, "hour_dense": False, "on_bad_row": "error",
            "block_bytes": BLOCK_BYTES}
LABEL, HOUR, DROP = "click", "hour", ("id",)


def input_files(data_dir: str, options: dict) -> list[str]:
    """``data_dir`` is the ``train`` file (plain or gzip) or a folder holding ``train``, ``train.gz`` or
    ``train.csv``."""
    if os.path.isdir(data_dir):
        for cand in ("train", "train.gz", "train.csv", "train.csv.gz"):
            if os.path.isfile(os.path.join(data_dir, cand)):
                return [os.path.join(data_dir, cand)]
        raise FileNotFoundError(f"{data_dir}: no train, train.gz or train.csv in this folder")
    check_file(data_dir)
    return [data_dir]


def _header(path: str, first: bytes) -> list[str]:
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"header is not UTF-8 text ({e})", line=1) from e
    cols = [c.strip() for c in text.rstrip("\n").split(",")]
    if LABEL not in cols:
        raise DataFormatError(path, f"missing label column {LABEL!r} in header {cols[:5]}...", line=1,
                              column=LABEL)
    if HOUR not in cols:
        raise DataFormatError(path, f"missing column {HOUR!r} in header", line=1, column=HOUR)
    if len(set(cols)) != len(cols):
        raise DataFormatError(path, "duplicate column names in header", line=1)
    return cols


def parse_lines(lines: Lines, path: str, cols: list[str], cats: list[str], bad: BadRows, hour_dense: bool):
    """:func:`parse_block` of ``lines``; an unchecked block (:func:`~mlet_jax.data._text.quick_lines`) is read by
    pyarrow's CSV reader instead, which refuses any line without ``len(cols)`` fields (raised as
    :class:`~mlet_jax.data._text.RaggedLines`), skips ``id`` and hands the categorical columns straight to the
    dictionary encoding of :func:`string_keys` (in a function returning the arrays, which the store's writer thread
    runs: :func:`~mlet_jax.data._build.parse_text_blocks`); a block with a bad label or hour goes to
    :func:`parse_block`, which names the line."""
    if lines.checked:
        return parse_block(lines.data, lines.line_no, path, cols, cats, bad, hour_dense)
    import pyarrow as pa
    import pyarrow.csv as pacsv

    keep = [c for c in cols if c not in DROP]
    try:
        t = pacsv.read_csv(
            pa.py_buffer(lines.data), read_options=pacsv.ReadOptions(column_names=cols),
            parse_options=pacsv.ParseOptions(delimiter=",", quote_char=False, double_quote=False, escape_char=False,
                                             newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(keep, pa.string()), include_columns=keep,
                                                 strings_can_be_null=True, null_values=[""],
                                                 quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowException):
        raise RaggedLines from None
    if t.num_rows != len(lines.line_no):
        raise RaggedLines
    h = pl.col(HOUR)
    p = pl.from_arrow(t.select([LABEL, HOUR])).select(
        pl.col(LABEL).str.to_integer(strict=False).alias("y"),
        h.str.slice(0, 6).str.strptime(pl.Date, "%y%m%d", strict=False).dt.weekday().alias("wd"),
        h.str.slice(6, 2).str.to_integer(strict=False).alias("hh"),
        h.str.contains(r"^\d{8}$").fill_null(False).alias("ok8"))
    ok = p.select((pl.col("y").is_in([0, 1]).fill_null(False) & pl.col("ok8") & pl.col("wd").is_not_null()
                   & pl.col("hh").is_between(0, 23).fill_null(False)).all()).item()
    if not ok:
        return parse_block(lines.data, lines.line_no, path, cols, cats, bad, hour_dense)

    def arrays():  # a good block's conversions, left to the store's writer thread (parse_text_blocks)
        label = p["y"].to_numpy().astype(np.float32)
        hh = p["hh"].to_numpy().astype(np.int64)
        keys = {"hour_of_day": hh, "weekday": p["wd"].to_numpy().astype(np.int64) - 1}
        for c in cats:
            keys[c] = string_keys(t.column(c))
        dense = (hh.astype(np.float32) / 23.0)[:, None] if hour_dense else np.zeros((len(label), 0), np.float32)
        return label, dense, keys

    return arrays


def parse_block(data: bytes, line_no: np.ndarray, path: str, cols: list[str], cats: list[str], bad: BadRows,
                hour_dense: bool):
    df = pl.read_csv(data, has_header=False, separator=",", quote_char=None, new_columns=cols,
                     schema=dict.fromkeys(cols, pl.String))
    h = pl.col(HOUR)
    p = df.select(pl.col(LABEL).str.to_integer(strict=False).alias("y"),
                  h.str.slice(0, 6).str.strptime(pl.Date, "%y%m%d", strict=False).dt.weekday().alias("wd"),
                  h.str.slice(6, 2).str.to_integer(strict=False).alias("hh"),
                  h.str.contains(r"^\d{8}$").fill_null(False).alias("ok8"))
    y = p["y"]
    rows_bad = np.zeros(len(df), bool)
    f = (~y.is_in([0, 1]).fill_null(False)).to_numpy()
    bad.check(path, f, line_no, LABEL, "label {value!r} is not 0 or 1", df[LABEL])
    rows_bad |= f
    hour_ok = p.select(pl.col("ok8") & pl.col("wd").is_not_null() & pl.col("hh").is_between(0, 23)).to_series()
    f = (~hour_ok.fill_null(False)).to_numpy()
    bad.check(path, f, line_no, HOUR, "bad hour {value!r} (expected YYMMDDHH)", df[HOUR])
    rows_bad |= f
    keep = bad.drop(rows_bad) if rows_bad.any() else slice(None)
    label = y.fill_null(0).to_numpy().astype(np.float32)[keep]
    hh = p["hh"].fill_null(0).to_numpy().astype(np.int64)[keep]
    keys = {"hour_of_day": hh, "weekday": p["wd"].fill_null(1).to_numpy().astype(np.int64)[keep] - 1}
    for c in cats:
        keys[c] = string_keys(df[c])[keep]
    dense = (hh.astype(np.float32) / 23.0)[:, None] if hour_dense else np.zeros((len(label), 0), np.float32)
    return label, dense, keys


def build(path: str, writer, *, progress: bool = False, **options) -> tuple:
    path = input_files(path, options)[0]
    size = check_file(path)
    bad = BadRows(options["on_bad_row"])
    blocks = iter_blocks(path, options["block_bytes"])
    first = next(blocks)
    nl = first.data.index(b"\n") + 1
    cols = _header(path, first.data[:nl])
    cats = [c for c in cols if c not in (LABEL, HOUR, *DROP)]
    fields = [Field("hour_of_day"), Field("weekday"), *[Field(c) for c in cats]]
    store = RawStore(writer.file("_raw"), fields, ["hour"] if options["hour_dense"] else [])
    bar = _bar(progress, size, "parse avazu", unit="B")
    first.data, first.first_line = first.data[nl:], 2
    first.n_lines = None if first.n_lines is None else first.n_lines - 1
    parse_text_blocks(store, _chain(first, blocks), bar,
                      lambda block: split_lines(block, path, b",", len(cols), bad),
                      lambda lines: parse_lines(lines, path, cols, cats, bad, options["hour_dense"]),
                      quick=lambda block: quick_lines(block, b",", len(cols)))
    if store.n == 0:
        raise DataFormatError(path, "no data rows after the header", line=2)
    codes = splits.random_split(store.n, options["test_fraction"], options["valid_fraction"], options["seed"])
    check_splits(codes, store, path, ("test_fraction", options["test_fraction"]),
                 valid_fraction=options["valid_fraction"])
    schema, info = finalize(store, codes, writer, min_count=options["min_count"],
                            hash_buckets=options["hash_buckets"], vocab_split=options["vocab_split"],
                            progress=progress)
    return schema, info | {"rows": store.n, **bad.summary()}


def _chain(first, rest):
    if first.data:
        yield first
    yield from rest
