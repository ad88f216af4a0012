"""BARS protocols ``criteo_x4_001``, ``criteo_x4_002``, ``avazu_x4_001``, ``avazu_x4_002`` as presets.

Preprocessing as FuxiCTR's code does it for the BARS dataset configs (``reczoo/BARS``,
``ranking/ctr/*/*_x4_00?/*/dataset_config.yaml``; FuxiCTR 2.3.7 ``fuxictr/preprocess`` and
``fuxictr/datasets/{criteo,avazu}.py``), checked against FuxiCTR's own output by ``tests/test_bars.py``:

* **Criteo_x4**: no dense features; all 39 columns are categorical fields, I1..I13 then C1..C26. An integer value
  I (missing -> 0) becomes the token ``int(floor(ln(x) ** 2))`` for x > 2 and ``int(x)`` otherwise (so 0, 1, 2
  and negatives keep their value, and 3 -> 1, 10 -> 5, 100 -> 21). This is FuxiCTR's ``convert_to_bucket``: the
  natural log squared. The dataset's README says "floor(log2(x))", but the code is what produced the leaderboard,
  so we follow the code. C1..C26 are strings; an empty value is out-of-vocabulary.
* **Avazu_x4**: ``id`` dropped; ``hour`` (YYMMDDHH) becomes three fields: hour of day, weekday (``%w``: 0 is
  Sunday) and is_weekend (Saturday or Sunday); field order ``hour, C1, banner_pos, ..., C21, weekday, weekend``
  (the config's order). The other 21 columns are strings; an empty value is out-of-vocabulary.
* **Vocabularies** are fitted on the training split only: a token seen at least ``min_count`` times there gets an
  id (10 / 2 for Criteo_x4_001 / _002, 2 / 1 for Avazu_x4_001 / _002); rarer, unseen and empty values share the
  out-of-vocabulary row. Ids follow decreasing training count. FuxiCTR's layout is ``0 = padding (unused),
  1..n = tokens, n + 1 = OOV`` (n + 2 rows); ours is ``0 = OOV, 1..n = tokens`` (n + 1 rows): the same
  partition of values, one unused row fewer. Among tokens of equal count our order is by key; FuxiCTR's depends on
  pandas' ``value_counts`` tie order (and its process pool's chunk order on big files), so ids can differ by a
  permutation within a count, which no model can tell apart.
* **Embedding dim** (for ``mlet_jax.train --protocol``): 16 for the ``_001`` protocols, 40 for ``_002``.

**Splits.** BARS's x4 files were made outside FuxiCTR (``reczoo/Datasets``, ``convert_{criteo,avazu}_x4.py``):
``StratifiedKFold(n_splits=10, shuffle=True, random_state=2018)`` from scikit-learn 0.19.1 over the Kaggle
file; fold 0 is test, fold 1 validation, folds 2..9 train (8:1:1). Given the Kaggle file (Criteo ``train.txt``,
Avazu ``train``), we draw a split of the same design ourselves (:func:`x4_split`: within each label class a
``numpy.random.default_rng(seed)`` permutation dealt round-robin into 10 folds; seed 2018): the same sizes and
class balance, but not the same rows. To evaluate on BARS's very rows, give a folder holding the published
``train.csv``, ``valid.csv`` and ``test.csv`` (CSV with a header); they are used as they are.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import polars as pl

from mlet_jax.data._build import MISSING_KEY, string_keys
from mlet_jax.data._text import BLOCK_BYTES, check_file, iter_blocks, split_lines
from mlet_jax.data.base import Schema
from mlet_jax.data.cache import SPLITS
from mlet_jax.data.errors import BadRows, DataFormatError
from mlet_jax.data.options import OptionError

TRAIN, VALID, TEST = 0, 1, 2
SEED = 2018
CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATS = tuple(f"C{i}" for i in range(1, 27))
AVAZU_CATS = ("C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
              "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
              "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21")
PUBLISHED = ("train.csv", "valid.csv", "test.csv")
WRITE_BLOCK_ROWS = 1 << 18  # rows per block when vocabularies are counted and splits written (a constant for tests)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One BARS evaluation protocol: the dataset, the minimum training count of a token and the embedding dim."""

    name: str
    dataset: str
    min_count: int
    embedding_dim: int

    @property
    def fields(self) -> tuple[str, ...]:
        if self.dataset == "criteo":
            return (*CRITEO_DENSE, *CRITEO_CATS)
        return ("hour", *AVAZU_CATS, "weekday", "weekend")

    @property
    def string_fields(self) -> tuple[str, ...]:
        """Fields whose empty value is out-of-vocabulary (the others are integers and have no missing value)."""
        return CRITEO_CATS if self.dataset == "criteo" else AVAZU_CATS


PROTOCOLS = {p.name: p for p in (Protocol("criteo_x4_001", "criteo", 10, 16),
                                 Protocol("criteo_x4_002", "criteo", 2, 40),
                                 Protocol("avazu_x4_001", "avazu", 2, 16),
                                 Protocol("avazu_x4_002", "avazu", 1, 40))}
DEFAULTS = {"protocol": None, "seed": SEED, "on_bad_row": "error", "block_bytes": BLOCK_BYTES}


def get_protocol(name) -> Protocol:
    """The :class:`Protocol` called ``name``; anything else is an :class:`OptionError` naming ``protocol``."""
    if name not in PROTOCOLS:
        raise OptionError("protocol", f"protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


def check_cli(dataset: str, protocol: str, options: dict, flag) -> str | None:
    """The usage error of ``prepare DATASET --protocol PROTOCOL`` with other ``options`` (None if fine): the
    protocol must be one of the dataset's, and it fixes every option but ``on_bad_row`` and the split's ``seed``;
    ``flag(option)`` spells an option as its command-line flag."""
    proto = get_protocol(protocol)
    if dataset != proto.dataset:
        return f"argument --protocol: {proto.name} is a protocol of {proto.dataset}, not of {dataset}"
    fixed = sorted(set(options) - {"on_bad_row", "seed"})
    if fixed:
        return (f"argument {flag(fixed[0])}: --protocol {proto.name} fixes the preprocessing; only --on-bad-row "
                f"and --seed (of the split) may be given with it")
    return None


def criteo_bucket(x: np.ndarray) -> np.ndarray:
    """FuxiCTR's ``convert_to_bucket``: ``int(floor(ln(x) ** 2))`` for x > 2, else ``int(x)`` (int64)."""
    x = np.asarray(x, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(x > 2, np.floor(np.log(np.where(x > 2, x, 3.0)) ** 2), np.trunc(x))
    return b.astype(np.int64)


def x4_split(label: np.ndarray, seed: int = SEED) -> np.ndarray:
    """uint8 split codes (0 train, 1 valid, 2 test) of an x4-style stratified 8:1:1 split.

    The rows of each label class, in the order of a ``numpy.random.default_rng(seed)`` permutation, are dealt
    round-robin into 10 folds (class 0 first, then class 1, from one generator); fold 0 is test, fold 1
    validation, the rest train: the design of BARS's ``StratifiedKFold(10, shuffle=True, random_state=2018)``,
    not its rows.
    """
    label = np.asarray(label)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(label), np.uint8)
    for cls in (0, 1):
        idx = np.flatnonzero(label == cls)
        fold[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % 10
    codes = np.full(len(label), TRAIN, np.uint8)
    codes[fold == 0] = TEST
    codes[fold == 1] = VALID
    return codes


def layout(data_dir: str, dataset: str) -> tuple[str, list[str]]:
    """("published", [train.csv, valid.csv, test.csv]) for a folder holding BARS's split files, else
    ("raw", [the Kaggle file]): Criteo ``train.txt`` (tab-separated, no header), Avazu ``train`` (CSV with header);
    plain or gzip, a folder holding it or the file itself."""
    if os.path.isdir(data_dir):
        pub = [os.path.join(data_dir, f) for f in PUBLISHED]
        if all(os.path.isfile(p) for p in pub):
            return "published", pub
        names = ("train.txt", "train.txt.gz") if dataset == "criteo" else ("train", "train.gz", "train.csv",
                                                                            "train.csv.gz")
        for cand in names:
            if os.path.isfile(os.path.join(data_dir, cand)):
                return "raw", [os.path.join(data_dir, cand)]
        raise FileNotFoundError(f"{data_dir}: neither BARS's {', '.join(PUBLISHED)} nor the Kaggle "
                                f"{' / '.join(names)} is in this folder")
    check_file(data_dir)
    return "raw", [data_dir]


def input_files(data_dir: str, options: dict) -> list[str]:
    return layout(data_dir, get_protocol(options["protocol"]).dataset)[1]


def _columns(proto: Protocol, path: str, header: bytes | None) -> tuple[list[str], str]:
    """The file's column names and its label column; a header must name every column the protocol reads."""
    if header is None:  # Criteo's Kaggle train.txt
        return ["label", *CRITEO_DENSE, *CRITEO_CATS], "label"
    try:
        cols = [c.strip() for c in header.decode("utf-8").rstrip("\n").split(",")]
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"header is not UTF-8 text ({e})", line=1) from e
    label = "Label" if proto.dataset == "criteo" else "click"
    need = [label, *CRITEO_DENSE, *CRITEO_CATS] if proto.dataset == "criteo" else [label, "hour", *AVAZU_CATS]
    missing = [c for c in need if c not in cols]
    if missing:
        raise DataFormatError(path, f"header lacks column(s) {missing[:5]} that {proto.name} reads", line=1,
                              column=missing[0])
    if len(set(cols)) != len(cols):
        raise DataFormatError(path, "duplicate column names in header", line=1)
    return cols, label


def parse_block(data: bytes, line_no: np.ndarray, path: str, proto: Protocol, cols: list[str], label_col: str,
                sep: str, bad: BadRows) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Whole lines -> (label float32 [n], {field: int64 keys [n]}); keys are FuxiCTR's tokens: integers for
    bucketed and time fields, a stable hash of the string for string fields (empty -> ``MISSING_KEY``)."""
    df = pl.read_csv(data, has_header=False, separator=sep, quote_char=None, new_columns=cols,
                     schema=dict.fromkeys(cols, pl.String))
    y = df[label_col].cast(pl.Float64, strict=False)
    rows_bad = (~y.is_in([0.0, 1.0]).fill_null(False)).to_numpy()
    bad.check(path, rows_bad, line_no, label_col, "label {value!r} is not 0 or 1", df[label_col])
    keys: dict[str, np.ndarray] = {}
    if proto.dataset == "criteo":
        for c in CRITEO_DENSE:
            v = df[c].str.strip_chars().str.to_integer(strict=False)
            f = (df[c].is_not_null() & (df[c].str.strip_chars() != "") & v.is_null()).to_numpy() & ~rows_bad
            bad.check(path, f, line_no, c, "{value!r} is not an integer", df[c])
            rows_bad |= f
            keys[c] = criteo_bucket(v.fill_null(0).to_numpy())
    else:
        h = pl.col("hour")
        p = df.select(h.str.slice(0, 6).str.strptime(pl.Date, "%y%m%d", strict=False).dt.weekday().alias("wd"),
                      h.str.slice(6, 2).str.to_integer(strict=False).alias("hh"),
                      h.str.contains(r"^\d{8}$").fill_null(False).alias("ok"))
        ok = p.select(pl.col("ok") & pl.col("wd").is_not_null() & pl.col("hh").is_between(0, 23)).to_series()
        f = (~ok.fill_null(False)).to_numpy() & ~rows_bad
        bad.check(path, f, line_no, "hour", "bad hour {value!r} (expected YYMMDDHH)", df["hour"])
        rows_bad |= f
        wd = p["wd"].fill_null(7).to_numpy().astype(np.int64) % 7  # ISO Monday=1..Sunday=7 -> %w Sunday=0
        keys["hour"] = p["hh"].fill_null(0).to_numpy().astype(np.int64)
        keys["weekday"] = wd
        keys["weekend"] = ((wd == 0) | (wd == 6)).astype(np.int64)
    for c in proto.string_fields:
        keys[c] = string_keys(df[c])
    label = y.fill_null(0).to_numpy().astype(np.float32)
    if rows_bad.any():
        keep = bad.drop(rows_bad)
        label, keys = label[keep], {c: k[keep] for c, k in keys.items()}
    return label, keys


class _Store:
    """Append-only flat int64 files, one per field, plus the labels and the file each row came from."""

    def __init__(self, directory: str, fields: tuple[str, ...]):
        os.makedirs(directory, exist_ok=True)
        self.dir, self.fields, self.n = directory, fields, 0
        self._fh = {nm: open(os.path.join(directory, f"{nm}.bin"), "wb") for nm in ("_label", "_file", *fields)}

    def append(self, label: np.ndarray, keys: dict[str, np.ndarray], file_index: int) -> None:
        self._fh["_label"].write(np.ascontiguousarray(label, np.float32).tobytes())
        self._fh["_file"].write(np.full(len(label), file_index, np.uint8).tobytes())
        for f in self.fields:
            self._fh[f].write(np.ascontiguousarray(keys[f], np.int64).tobytes())
        self.n += len(label)

    def close(self) -> None:
        for fh in self._fh.values():
            fh.close()

    def read(self, name: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows ``lo:hi`` of one column, by a plain read (pages of a memory map would stay resident)."""
        dt = np.dtype({"_label": np.float32, "_file": np.uint8}.get(name, np.int64))
        hi = self.n if hi is None else min(hi, self.n)
        if hi <= lo:
            return np.zeros(0, dt)
        return np.fromfile(os.path.join(self.dir, f"{name}.bin"), dtype=dt, count=hi - lo, offset=lo * dt.itemsize)


def fit_vocab(blocks, min_count: int, drop_missing: bool) -> np.ndarray:
    """The keys (int64) of ids 1..n: seen at least ``min_count`` times in the key arrays ``blocks`` (one array
    or an iterable of them, counted block by block), by decreasing count, ties by key; ``MISSING_KEY`` (an empty
    string) never gets an id when ``drop_missing``."""
    if isinstance(blocks, np.ndarray):
        blocks = [blocks]
    vc, parts = pl.DataFrame(schema={"k": pl.Int64, "len": pl.UInt32}), []
    for i, keys in enumerate(blocks):
        parts.append(pl.DataFrame({"k": np.asarray(keys, np.int64)}).group_by("k").len())
        if i % 16 == 15:  # merge every 16 blocks: the running table is as large as the vocabulary
            vc, parts = pl.concat([vc, *parts]).group_by("k").agg(pl.col("len").sum()), []
    vc = pl.concat([vc, *parts]).group_by("k").agg(pl.col("len").sum())
    vc = vc.filter(pl.col("len") >= min_count)
    if drop_missing:
        vc = vc.filter(pl.col("k") != MISSING_KEY)
    return vc.sort(["len", "k"], descending=[True, False])["k"].to_numpy().astype(np.int64)


def lookup(vocab_keys: np.ndarray, keys: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Local ids (int32): the position + 1 of each key in ``vocab_keys``, 0 (OOV) for the others; ``order`` is
    ``argsort(vocab_keys)`` when the caller has it already."""
    if len(vocab_keys) == 0:
        return np.zeros(len(keys), np.int32)
    order = np.argsort(vocab_keys, kind="stable") if order is None else order
    srt = vocab_keys[order]
    pos = np.minimum(np.searchsorted(srt, keys), len(srt) - 1)
    return np.where(srt[pos] == keys, order[pos] + 1, 0).astype(np.int32)


def build(data_dir: str, writer, *, progress: bool = False, **options) -> tuple[Schema, dict]:
    """Parse ``data_dir`` with protocol ``options["protocol"]`` into ``writer``; returns (schema, info)."""
    proto = get_protocol(options["protocol"])
    kind, paths = layout(data_dir, proto.dataset)
    bad = BadRows(options["on_bad_row"])
    store = _Store(writer.file("_raw"), proto.fields)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(check_file(p) for p in paths), desc=f"parse {proto.name}", unit="B",
                   unit_scale=True, dynamic_ncols=True)
    t0, done = time.time(), 0
    try:
        for fi, path in enumerate(paths):
            check_file(path)
            header_needed = not (proto.dataset == "criteo" and kind == "raw")
            sep = "\t" if not header_needed else ","
            cols, label_col = _columns(proto, path, None) if not header_needed else (None, None)
            for block in iter_blocks(path, options["block_bytes"]):
                if cols is None:
                    nl = block.data.find(b"\n") + 1
                    cols, label_col = _columns(proto, path, block.data[:nl])
                    block.data, block.first_line = block.data[nl:], block.first_line + 1
                lines = split_lines(block, path, sep.encode(), len(cols), bad)
                if len(lines.line_no):
                    store.append(*parse_block(lines.data, lines.line_no, path, proto, cols, label_col, sep, bad),
                                 fi)
                if bar is not None:
                    bar.n = done + block.bytes_read
                    bar.refresh()
            done += os.path.getsize(path)
            if cols is None:
                raise DataFormatError(path, "file holds no header line", line=1)
    finally:
        store.close()
        if bar is not None:
            bar.close()
    if store.n == 0:
        raise DataFormatError(paths[0], "no data rows", line=1)
    label = store.read("_label")
    if kind == "published":
        codes = store.read("_file")  # file 0, 1, 2 = train, valid, test = codes 0, 1, 2
        for i, nm in enumerate(PUBLISHED):
            if not (codes == i).any():
                raise DataFormatError(paths[i], f"{nm} holds no data rows", line=2)
    else:
        codes = x4_split(label, int(options["seed"]))
        if not all((codes == i).any() for i in (TRAIN, VALID, TEST)):
            raise DataFormatError(paths[0], f"{store.n} rows are too few for an 8:1:1 split (every split needs "
                                            f"a row)")
    for i, nm in enumerate(SPLITS):  # AUC and early stopping need both classes in every split
        y = label[codes == i]
        if len(y) and (y == y[0]).all():
            where = paths[i] if kind == "published" else paths[0]
            raise DataFormatError(where, f"the {nm} split's {len(y)} labels are all {int(y[0])}; a CTR model needs "
                                         f"both classes in every split")
    schema, info = _write(store, codes, label, proto, writer)
    info.update(protocol=proto.name, embedding_dim=proto.embedding_dim, min_count=proto.min_count,
                split_source=("BARS's published train.csv/valid.csv/test.csv" if kind == "published" else
                              f"x4_split(seed={int(options['seed'])}): stratified 10 folds, fold 0 test, 1 valid"),
                rows=store.n, parse_seconds=round(time.time() - t0, 3), **bad.summary())
    return schema, info


def _write(store: _Store, codes: np.ndarray, label: np.ndarray, proto: Protocol, writer) -> tuple[Schema, dict]:
    """Fit the vocabularies on the training rows and write the splits, block by block (memory bounded by the
    block and the vocabularies, not the rows)."""
    block_rows = WRITE_BLOCK_ROWS
    starts = range(0, store.n, block_rows)
    vocabs = {f: fit_vocab((store.read(f, lo, lo + block_rows)[codes[lo:lo + block_rows] == TRAIN] for lo in starts),
                           proto.min_count, f in proto.string_fields) for f in proto.fields}
    orders = {f: np.argsort(v, kind="stable") for f, v in vocabs.items()}
    sizes = tuple(len(vocabs[f]) + 1 for f in proto.fields)
    schema = Schema(field_names=proto.fields, vocab_sizes=sizes, dense_names=())
    split_n = {nm: int((codes == i).sum()) for i, nm in enumerate(SPLITS)}
    out = {nm: {"ids": writer.array(f"{nm}_ids", (k, len(proto.fields)), np.int32),
                "dense": writer.array(f"{nm}_dense", (k, 0), np.float32),
                "label": writer.array(f"{nm}_label", (k,), np.float32)} for nm, k in split_n.items()}
    pos = dict.fromkeys(out, 0)
    counts = [np.zeros(s, np.int64) for s in sizes]
    for lo in starts:
        hi = min(store.n, lo + block_rows)
        ids = np.stack([lookup(vocabs[f], store.read(f, lo, hi), orders[f]) for f in proto.fields], axis=1)
        cc = codes[lo:hi]
        for i, nm in enumerate(SPLITS):
            sel = np.flatnonzero(cc == i)
            if len(sel) == 0:
                continue
            p, k = pos[nm], len(sel)
            out[nm]["ids"][p:p + k] = ids[sel]
            out[nm]["label"][p:p + k] = label[lo:hi][sel]
            pos[nm] = p + k
            if i == TRAIN:
                for fi in range(len(proto.fields)):
                    counts[fi] += np.bincount(ids[sel, fi], minlength=sizes[fi])
    np.save(writer.file("id_counts.npy"), np.concatenate(counts))
    np.savez(writer.file("vocab.npz"), **vocabs)
    return schema, {"splits": split_n}
