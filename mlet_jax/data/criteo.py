"""Criteo-Kaggle (Display Advertising Challenge) ``train.txt``, preprocessed as the DLRM reference.

Format: tab-separated, no header, 40 fields per line: label, I1..I13 (integers, may be empty or negative),
C1..C26 (hex strings, up to 8 digits, may be empty). Dense: empty -> 0, negatives -> 0, then ``log(x + 1)``.
Categorical: the hex value is the key (empty -> missing, its own category); per-field ids by a training vocabulary
with optional ``min_count`` (rarer ids share the OOV id 0) or ``hash_buckets`` R (id = value mod R, as DLRM's
``--max-ind-range``). Split: rows in file order are 7 equal days; days 1-6 train, day 7 halves -> test, validation.

References:
    Naumov et al., "Deep Learning Recommendation Model for Personalization and Recommendation Systems", 2019
    (``dlrm_data_pytorch.py``, ``data_utils.py``).
"""

from __future__ import annotations

import os

import numpy as np
import polars as pl

from mlet_jax.data import splits
from mlet_jax.data._build import MISSING_KEY, Field, RawStore, _bar, check_splits, finalize, parse_text_blocks
from mlet_jax.data._text import BLOCK_BYTES, Lines, check_file, iter_blocks, quick_lines, read_lines, split_lines
from mlet_jax.data.errors import BadRows, DataFormatError

DENSE = tuple(f"I{i}" for i in range(1, 14))
CATS = tuple(f"C{i}" for i in range(1, 27))
COLUMNS = ("label", *DENSE, *CATS)
DEFAULTS = {"min_count": 1, "hash_buckets": None, "vocab_split": "train", "days": 7, "on_bad_row": "error",
            "block_bytes": BLOCK_BYTES}


def parse_block(lines: Lines, path: str, bad: BadRows):
    """Parse whole tab-separated lines into (label, dense, keys[26]) with every bad value checked (a clean block:
    a function returning them, see :func:`~mlet_jax.data._build.parse_text_blocks`).

    One polars select converts every column; the block is clean when its label has no nulls and is 0/1, a converted
    dense or hex column has no more nulls than the raw strings (empty), and the hex values are >= 0 and at most 8
    digits (a few column aggregates). A block with anything bad goes through :func:`_checked`, which names the first
    bad line and column (or skips the bad rows).
    """
    df = read_lines(lines, COLUMNS, "\t")
    p = df.select(pl.col("label").str.to_integer(strict=False),
                  *[pl.col(c).str.to_integer(strict=False) for c in DENSE],
                  *[pl.col(c).str.to_integer(base=16, strict=False) for c in CATS])
    agg = pl.concat([p.select(pl.col("label").min().alias("lo"), pl.col("label").max().alias("hi"),
                              pl.min_horizontal(*[pl.col(c).min() for c in CATS]).alias("hex_min")),
                     df.select(pl.max_horizontal(*[pl.col(c).str.len_bytes().max() for c in CATS]).alias("hex_len"))],
                    how="horizontal").row(0)
    lo, hi, hex_min, hex_len = agg
    raw_nulls, nulls = df.null_count().row(0), p.null_count().row(0)
    clean = (nulls[0] == 0 and lo >= 0 and hi <= 1 and raw_nulls[1:] == nulls[1:]
             and (hex_min is None or hex_min >= 0) and (hex_len is None or hex_len <= 8))
    if not clean:
        return _checked(df, p, lines.line_no, path, bad)

    def arrays():  # a clean block's conversions, left to the store's writer thread (parse_text_blocks)
        label = p["label"].to_numpy().astype(np.float32)
        dense = p.select(pl.col(c).fill_null(0).clip(lower_bound=0) for c in DENSE).to_numpy()
        dense = np.log1p(dense.astype(np.float64)).astype(np.float32)
        cats = p.select(pl.col(c).fill_null(MISSING_KEY) for c in CATS).to_numpy(order="fortran")
        return label, dense, {c: cats[:, j] for j, c in enumerate(CATS)}

    return arrays


def _checked(df: pl.DataFrame, p: pl.DataFrame, line_no: np.ndarray, path: str, bad: BadRows):
    """:func:`parse_block` of a block with a bad value: check column by column (label, I1..I13, C1..C26) and report
    the first bad line of the first bad column, or drop every bad row."""
    flags = df.select(
        pl.col("label").is_null().alias("label_missing"),
        *[(pl.col(c).is_not_null() & p[c].is_null()).alias(c) for c in DENSE],
        *[(pl.col(c).is_not_null() & (p[c].is_null() | (p[c] < 0) | (pl.col(c).str.len_bytes() > 8))).alias(c)
          for c in CATS])
    lab = p["label"]
    bad_rows = np.zeros(len(df), bool)
    f = flags["label_missing"].to_numpy()
    bad.check(path, f, line_no, "label", "missing label")
    bad_rows |= f
    f = (~lab.is_in([0, 1]).fill_null(True)).to_numpy() & ~bad_rows
    bad.check(path, f, line_no, "label", "label {value!r} is not 0 or 1", df["label"])
    bad_rows |= f
    for c in DENSE:
        f = flags[c].to_numpy()
        if f.any():
            bad.check(path, f, line_no, c, "{value!r} is not an integer", df[c])
            bad_rows |= f
    for c in CATS:
        f = flags[c].to_numpy()
        if f.any():
            bad.check(path, f, line_no, c, "malformed hex value {value!r} (expected up to 8 hex digits)", df[c])
            bad_rows |= f
    keep = bad.drop(bad_rows) if bad_rows.any() else None
    label = lab.fill_null(0).to_numpy().astype(np.float32)
    dense = np.log1p(np.maximum(p.select(DENSE).fill_null(0).to_numpy(), 0).astype(np.float64)).astype(np.float32)
    keys = {c: p[c].fill_null(MISSING_KEY).to_numpy().astype(np.int64) for c in CATS}
    if keep is not None:
        label, dense, keys = label[keep], dense[keep], {c: k[keep] for c, k in keys.items()}
    return label, dense, keys


def build(path: str, writer, *, progress: bool = False, **options) -> tuple:
    """Parse ``path`` into ``writer`` (a :class:`~mlet_jax.data.cache.CacheWriter`); returns (schema, info)."""
    path = input_files(path, options)[0]
    size = check_file(path)
    bad = BadRows(options["on_bad_row"])
    store = RawStore(writer.file("_raw"), [Field(c) for c in CATS], list(DENSE))
    bar = _bar(progress, size, "parse criteo", unit="B")
    parse_text_blocks(store, iter_blocks(path, options["block_bytes"]), bar,
                      lambda block: split_lines(block, path, b"\t", len(COLUMNS), bad),
                      lambda lines: parse_block(lines, path, bad),
                      quick=lambda block: quick_lines(block, b"\t", len(COLUMNS)))
    if store.n == 0:
        raise DataFormatError(path, "no data rows", line=1)
    codes = splits.criteo_days(store.n, int(options["days"]))
    check_splits(codes, store, path, ("days", options["days"]))
    schema, info = finalize(store, codes, writer, min_count=options["min_count"],
                            hash_buckets=options["hash_buckets"], vocab_split=options["vocab_split"],
                            progress=progress)
    return schema, info | {"rows": store.n, **bad.summary()}


def input_files(data_dir: str, options: dict) -> list[str]:
    """``data_dir`` is ``train.txt`` (plain or gzip) or a folder holding it."""
    if os.path.isdir(data_dir):
        for cand in ("train.txt", "train.txt.gz"):
            if os.path.exists(os.path.join(data_dir, cand)):
                return [os.path.join(data_dir, cand)]
        raise FileNotFoundError(f"{data_dir}: no train.txt or train.txt.gz in this folder")
    check_file(data_dir)
    return [data_dir]
