"""Any table (CSV, plain or gzip, or Parquet): the user names the label, categorical and numeric columns.

CSV is streamed with pyarrow's reader (quoting handled), Parquet by row groups; each batch is checked and
converted with polars. Label: 0/1 (ints, floats, booleans or "0"/"1"), or any number binarized by
``label_threshold`` (label = value >= threshold, a finite number). Categorical columns are keyed by a stable hash of
their string form with ``min_count`` / ``hash_buckets``; numeric columns are float32 with optional ``log1p``
(negatives -> 0 first, as for Criteo). Splits: ``random`` (seeded) or ``sequential`` (file order: train, then
validation, then test).

Missing values: an empty field (or a Parquet null) is missing, and so is any string listed in ``missing_values``
(default none: ``NA``, ``null``, ``N/A`` or ``nan`` are ordinary categories unless listed; pyarrow's own list of null
strings is not used). A missing categorical value is its own category; a missing numeric value is 0; a missing label
is a bad row. A numeric NaN (the text ``nan``, or NaN in Parquet) is a bad row unless ``impute_nan`` gives the value
to put in its place; an infinite value is always a bad row. Bad rows raise :class:`DataFormatError` naming the file,
row and column, or are skipped and counted with ``on_bad_row="skip"``.
"""

from __future__ import annotations

import codecs
import gzip

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlet_jax.data import splits
from mlet_jax.data._build import Field, RawStore, _bar, check_splits, finalize, string_keys
from mlet_jax.data._text import check_file, is_gzip
from mlet_jax.data.errors import BadRows, DataFormatError

DEFAULTS = {"label": None, "categorical": None, "numeric": [], "format": "auto", "separator": ",",
            "encoding": "utf-8", "label_threshold": None, "log1p": False, "split": "random",
            "test_fraction": 0.1, "valid_fraction": 0.0, "seed": 0, "min_count": 1, "hash_buckets": None,
            "vocab_split": "train", "on_bad_row": "error", "missing_values": [], "impute_nan": None,
            "block_bytes": 16 << 20}


def input_files(data_dir: str, options: dict) -> list[str]:
    check_file(data_dir)
    return [data_dir]


def _format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    with open(path, "rb") as fh:
        return "parquet" if fh.read(4) == b"PAR1" else "csv"


def _batches(path: str, fmt: str, o: dict, columns: list[str], bad: BadRows):
    """Yield (pyarrow RecordBatch, first data row number)."""
    if fmt == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise DataFormatError(path, f"not a readable Parquet file ({e})") from e
        names = pf.schema_arrow.names
        _check_columns(path, names, columns, o["label"])
        row = 1
        for b in pf.iter_batches(batch_size=1 << 18, columns=columns):
            yield b, row
            row += b.num_rows
        return
    try:
        codecs.lookup(o["encoding"])
    except LookupError as e:
        raise DataFormatError(path, f"unknown encoding {o['encoding']!r}") from e

    pending: list[DataFormatError] = []

    def on_invalid(r):  # pyarrow swallows exceptions raised here: keep the error, raise it after
        msg = f"expected {r.expected_columns} fields, found {r.actual_columns}"
        if bad.policy == "error":
            pending.append(DataFormatError(path, msg, line=r.number))
            return "error"
        if len(bad.examples) < bad.keep_examples:
            bad.examples.append(str(DataFormatError(path, msg, line=r.number)))
        bad.drop(np.ones(1, bool))
        return "skip"

    src = pa.input_stream(path, compression="gzip" if is_gzip(path) else None)
    try:
        reader = pacsv.open_csv(
            src, read_options=pacsv.ReadOptions(use_threads=False, block_size=int(o["block_bytes"]),
                                                encoding=o["encoding"]),
            parse_options=pacsv.ParseOptions(delimiter=o["separator"], invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(columns, pa.string()),
                                                 include_columns=columns, null_values=[""],
                                                 strings_can_be_null=True,
                                                 quoted_strings_can_be_null=True))
    except (pa.ArrowInvalid, pa.ArrowKeyError) as e:
        if pending:
            raise pending[0] from e
        msg = str(e)
        if "include_columns" in msg or "not found" in msg.lower():
            with (gzip.open if is_gzip(path) else open)(path, "rb") as fh:
                head = fh.read(1 << 16)
            names = head.split(b"\n")[0].decode(o["encoding"], "replace").rstrip("\r").split(o["separator"])
            _check_columns(path, [n.strip('"') for n in names], columns, o["label"])
        raise DataFormatError(path, f"cannot read CSV: {msg}", line=1) from e
    except (OSError, EOFError) as e:
        raise DataFormatError(path, f"cannot read (truncated or corrupt?): {e}", line=1) from e
    row = 1
    while True:
        try:
            b = reader.read_next_batch()
        except StopIteration:
            break
        except DataFormatError:
            raise
        except (pa.ArrowInvalid, OSError, EOFError) as e:
            if pending:
                raise pending[0] from e
            raise DataFormatError(path, f"cannot read after data row {row - 1}: {e}", row=row) from e
        yield b, row
        row += b.num_rows


def _check_columns(path: str, names: list[str], columns: list[str], label: str) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        what = "label column" if label in missing else "column(s)"
        raise DataFormatError(path, f"missing {what} {missing}; the file has {names[:20]}", line=1,
                              column=missing[0])


def build(path: str, writer, *, progress: bool = False, **o) -> tuple:
    size = check_file(path)
    cats, nums, lab = list(o["categorical"]), list(o["numeric"]), o["label"]
    columns = [lab, *cats, *nums]
    fmt = _format(path, o["format"])
    bad = BadRows(o["on_bad_row"], unit="row")
    store = RawStore(writer.file("_raw"), [Field(c) for c in cats], nums)
    bar = _bar(progress, size, "parse table", unit="B")
    try:
        for batch, row0 in _batches(path, fmt, o, columns, bad):
            if batch.num_rows == 0:
                continue
            if fmt == "csv" and set(batch.schema.names) != set(columns):
                _check_columns(path, batch.schema.names, columns, lab)
            store.append(*_convert(pl.from_arrow(batch), row0, path, o, cats, nums, bad))
            if bar is not None:
                bar.update(batch.nbytes)
    finally:
        store.close()
        if bar is not None:
            bar.close()
    if store.n == 0:
        raise DataFormatError(path, "no data rows", row=1)
    if o["split"] == "random":
        codes = splits.random_split(store.n, o["test_fraction"], o["valid_fraction"], o["seed"])
    else:
        codes = splits.ordered_split(None, store.n, o["test_fraction"], o["valid_fraction"])
    thr = o["label_threshold"]
    check_splits(codes, store.read("label"), path, ("test_fraction", o["test_fraction"]),
                 "" if thr is None else f" (label = {lab} >= label_threshold={thr:g})", o["valid_fraction"])
    schema, info = finalize(store, codes, writer, min_count=o["min_count"], hash_buckets=o["hash_buckets"],
                            vocab_split=o["vocab_split"], progress=progress)
    return schema, info | {"rows": store.n, "input_format": fmt, **bad.summary()}


def _convert(df: pl.DataFrame, row0: int, path: str, o: dict, cats, nums, bad: BadRows):
    rows = row0 + np.arange(len(df), dtype=np.int64)
    if o["missing_values"]:
        df = df.with_columns(pl.when(pl.col(c).cast(pl.String).is_in(o["missing_values"])).then(None)
                             .otherwise(pl.col(c)).alias(c) for c in df.columns)
    lab = o["label"]
    y_raw = df[lab]
    if y_raw.dtype == pl.Boolean:
        y_raw = y_raw.cast(pl.Int8)
    ys = y_raw.cast(pl.String).str.strip_chars().str.to_lowercase().replace({"true": "1", "false": "0"})
    y = ys.cast(pl.Float64, strict=False)
    rows_bad = y_raw.is_null().to_numpy()
    bad.check(path, rows_bad, rows, lab, "missing label")
    f = y.is_null().to_numpy() & ~rows_bad
    bad.check(path, f, rows, lab, "label {value!r} is not a number", y_raw.cast(pl.String))
    rows_bad |= f
    if o["label_threshold"] is not None:
        f = ~y.is_finite().fill_null(True).to_numpy() & ~rows_bad
        bad.check(path, f, rows, lab, "label {value!r} is not a finite number", y_raw.cast(pl.String))
        rows_bad |= f
        y = (y >= float(o["label_threshold"])).cast(pl.Float64)
    else:
        f = ~y.is_in([0.0, 1.0]).fill_null(True).to_numpy()
        bad.check(path, f, rows, lab, "label {value!r} is not 0 or 1 (set label_threshold to binarize)",
                  y_raw.cast(pl.String))
        rows_bad = rows_bad | f
    dense = np.zeros((len(df), len(nums)), np.float32)
    for i, c in enumerate(nums):
        s = df[c]
        v = (s if s.dtype.is_numeric() else s.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False))
        v = v.cast(pl.Float64)
        if o["impute_nan"] is not None:
            v = v.fill_nan(float(o["impute_nan"]))
        f = (v.is_null() & s.is_not_null() & (s.cast(pl.String).str.strip_chars() != "")).to_numpy()
        bad.check(path, f, rows, c, "{value!r} is not a number", s.cast(pl.String))
        rows_bad |= f
        f = v.is_nan().fill_null(False).to_numpy()
        bad.check(path, f, rows, c, "{value!r} is NaN (impute_nan / --impute-nan VALUE replaces NaN; or list the "
                  "string in missing_values / --missing-values)", s.cast(pl.String))
        rows_bad |= f
        f = v.is_infinite().fill_null(False).to_numpy()
        bad.check(path, f, rows, c, "{value!r} is not a finite number", s.cast(pl.String))
        rows_bad |= f
        x = v.fill_nan(0).fill_null(0).to_numpy()
        x = np.where(np.isfinite(x), x, 0)
        dense[:, i] = np.log1p(np.maximum(x, 0)) if o["log1p"] else x
    keys = {c: string_keys(df[c].cast(pl.String)) for c in cats}
    label = y.fill_null(0).to_numpy().astype(np.float32)
    if rows_bad.any():
        keep = bad.drop(rows_bad)
        label, dense, keys = label[keep], dense[keep], {c: k[keep] for c, k in keys.items()}
    return label, dense, keys


