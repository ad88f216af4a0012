"""Shared build machinery: raw keys on disk, vocabularies (min-count OOV, hashing), split writing.

A loader parses its file block by block into a :class:`RawStore` (label, dense features, one int64 *key* per
categorical value: hex value, integer or a stable 63-bit hash of the string; -1 for missing), appended to flat binary
files so that the file never has to fit in memory. :func:`finalize` then fits one vocabulary per field on the
training rows and writes the split arrays of the cache, block by block.

Memory does not grow with the rows of the file (issue 16): the raw columns are read back in blocks with plain reads
(never memory-mapped, whose touched pages would count as resident), and the split arrays are written with positioned
writes. Vocabularies are fitted one field at a time in one pass over its keys: a :class:`KeyTable` (a vectorized
open-addressing hash table) gives every distinct key a provisional code in order of first appearance, the training
rows' codes are counted into an array indexed by code, and each row's code is written to disk (4 bytes, replacing
its 8-byte key); the final ids (decreasing count, ties by increasing key) are then one permutation of the codes, so
writing the splits is a gather ``perm[code]`` per field instead of a search. Fields are fitted, and then blocks of the
split arrays written (each block's rows go to positions known from the split codes), by ``FIT_THREADS`` threads at
once (numpy, polars and ``pwrite`` release the GIL in the work that counts); the outputs do not depend on it. What is
held is per distinct value (``STATE_BYTES_PER_VALUE``, for the fields being fitted at the moment) plus the split
codes (1 byte per row) and one block per thread.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from mlet_jax.data._text import RaggedLines
from mlet_jax.data.base import Schema
from mlet_jax.data.cache import SPLITS, CacheWriter
from mlet_jax.data.errors import DataFormatError
from mlet_jax.data.options import OptionError

if TYPE_CHECKING:
    import pyarrow as pa

MISSING_KEY = -1
TRAIN, VALID, TEST = 0, 1, 2
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_MASK63 = np.uint64((1 << 63) - 1)
# Held per distinct value while finalize fits one field: its KeyTable (int64 key + int32 code per slot, 2-4 slots per
# value: 24-48 bytes; the keys by code and the counts, int64 each with up to 2x spare: 32 bytes); held for every field
# until the splits are written: the code -> id permutation (int32), the vocabulary keys (int64), id_counts (int64).
STATE_BYTES_PER_VALUE = 48 + 32 + 20
_BLOCK_ROWS = 1 << 18       # rows per block read back, counted, looked up and written by finalize
FIT_THREADS = 2              # fields fitted, then blocks written, at once by finalize (peak: this many KeyTables)
_MERGE_ROWS = 1 << 22        # fit_vocab_blocks: merge pending block tables at this many rows (or the table's)
_SORTED_LOOKUP = 1 << 16     # Vocab.lookup: vocabularies larger than this look up a block's distinct keys (sorted) only
_TABLE_SLOTS = 1 << 12       # KeyTable: initial slots (a power of two; doubled whenever it would pass half full)
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)   # Fibonacci hashing: the top bits of key * 2^64 / golden ratio


def string_keys(values: pl.Series | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Stable int64 keys of strings: FNV-1a 64 masked to 63 bits; null and "" -> MISSING_KEY.

    Hashes the distinct values only (dictionary encoding), one vectorized numpy step per byte position.
    """
    # imported here, not at the top: Criteo's prepare never needs pyarrow (~0.1 s of imports)
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = values.to_arrow() if isinstance(values, pl.Series) else values
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.large_string())
    enc = pc.dictionary_encode(arr)
    uniq = enc.dictionary.cast(pa.large_string())
    uh = _fnv1a(uniq)
    idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    uh = np.append(uh, MISSING_KEY)          # index -1 -> missing
    return uh[idx]


def _fnv1a(strings: pa.LargeStringArray) -> np.ndarray:
    n = len(strings)
    if n == 0:
        return np.zeros(0, np.int64)
    _, offs_buf, data_buf = strings.buffers()
    offs = np.frombuffer(offs_buf, np.int64, count=n + 1, offset=strings.offset * 8)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    starts, lens = offs[:-1], np.diff(offs)
    h = np.full(n, _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lens.max(initial=0))):
            live = np.flatnonzero(lens > j)
            h[live] = (h[live] ^ data[starts[live] + j].astype(np.uint64)) * _FNV_PRIME
    out = (h & _MASK63).astype(np.int64)
    out[lens == 0] = MISSING_KEY
    return out


@dataclasses.dataclass(frozen=True)
class Field:
    """A categorical field: ``kind="key"`` gets a vocabulary; ``kind="direct"`` already holds local ids."""

    name: str
    kind: str = "key"
    slots: int = 1
    vocab_size: int = 0   # for "direct" fields


class RawStore:
    """Append-only flat binary files (one per field, so each field's keys are contiguous)."""

    def __init__(self, directory: str, fields: list[Field], dense_names: list[str], extras: tuple[str, ...] = ()):
        os.makedirs(directory, exist_ok=True)
        self.dir, self.fields, self.dense_names, self.extras = directory, fields, list(dense_names), extras
        self.n = 0
        self._fh = {name: open(self._path(name), "wb")
                    for name in ["label", "dense", *(f.name for f in fields), *extras]}

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.bin")

    def append(self, label: np.ndarray, dense: np.ndarray, cols: Mapping[str, np.ndarray],
               extras: Mapping[str, np.ndarray] | None = None) -> None:
        m = len(label)
        self._fh["label"].write(np.ascontiguousarray(label, np.float32).tobytes())
        self._fh["dense"].write(np.ascontiguousarray(dense, np.float32).reshape(m, len(self.dense_names)).tobytes())
        for f in self.fields:
            dt = np.int64 if f.kind == "key" else np.int32
            self._fh[f.name].write(np.ascontiguousarray(cols[f.name], dt).tobytes())
        for name in self.extras:
            self._fh[name].write(np.ascontiguousarray(extras[name], np.int64).tobytes())
        self.n += m

    def close(self) -> None:
        for fh in self._fh.values():
            fh.close()

    def _layout(self, name: str) -> tuple[np.dtype, int, bool]:
        """(dtype, values per row, 2-D) of a stored column, as :meth:`read` shapes it."""
        if name == "label":
            return np.dtype(np.float32), 1, False
        if name == "dense":
            return np.dtype(np.float32), len(self.dense_names), True
        if name in self.extras:
            return np.dtype(np.int64), 1, False
        f = next(f for f in self.fields if f.name == name)
        return (np.dtype(np.int64), 1, False) if f.kind == "key" else (np.dtype(np.int32), f.slots, True)

    def chunk(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1 of one stored column, read into memory (not mapped: RSS stays one block)."""
        dt, width, two_d = self._layout(name)
        fh = self._fh[name]
        if not fh.closed:
            fh.flush()
        m = max(0, min(hi, self.n) - lo)
        count = m * width
        out = np.fromfile(self._path(name), dtype=dt, count=count, offset=lo * width * dt.itemsize) if count \
            else np.zeros(0, dt)
        if len(out) != count:
            raise OSError(f"{self._path(name)}: short read ({len(out)} of {count} values)")
        return out.reshape(m, width) if two_d else out

    def chunks(self, name: str, block_rows: int) -> Iterable[np.ndarray]:
        for lo in range(0, self.n, block_rows):
            yield self.chunk(name, lo, lo + block_rows)

    def read(self, name: str) -> np.ndarray:
        """Memory map of one stored column."""
        if name == "label":
            dt, shape = np.float32, (self.n,)
        elif name == "dense":
            dt, shape = np.float32, (self.n, len(self.dense_names))
        elif name in self.extras:
            dt, shape = np.int64, (self.n,)
        else:
            f = next(f for f in self.fields if f.name == name)
            dt, shape = (np.int64, (self.n,)) if f.kind == "key" else (np.int32, (self.n, f.slots))
        if self.n == 0 or 0 in shape:
            return np.zeros(shape, dt)
        return np.memmap(self._path(name), dtype=dt, mode="r", shape=shape)


@dataclasses.dataclass
class Vocab:
    """Key -> local id for one field: id 0 is out-of-vocabulary, ids 1.. follow decreasing training count."""

    keys: np.ndarray          # int64 [K]: key of id i+1
    hash_buckets: int | None = None

    def __post_init__(self):
        order = np.argsort(self.keys, kind="stable")
        self._sorted, self._ids = self.keys[order], (order + 1).astype(np.int32)

    @property
    def size(self) -> int:
        return int(self.hash_buckets) if self.hash_buckets else len(self.keys) + 1

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        if self.hash_buckets:
            out = (keys.view(np.uint64) % np.uint64(self.hash_buckets)).astype(np.int32)
            out[keys == MISSING_KEY] = 0
            return out
        if len(self._sorted) == 0:
            return np.zeros(len(keys), np.int32)
        if len(self._sorted) > _SORTED_LOOKUP and len(keys) > 1:
            # a large table is searched by the block's distinct keys in sorted order (cache-friendly): 5-7x faster
            # than searching every key of the block at 10M keys; the same ids
            uniq, inv = np.unique(keys, return_inverse=True)
            return self._search(uniq)[inv.ravel()]
        return self._search(keys)

    def _search(self, keys: np.ndarray) -> np.ndarray:
        pos = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        return np.where(self._sorted[pos] == keys, self._ids[pos], 0).astype(np.int32)


def fit_vocab(keys: np.ndarray, min_count: int = 1) -> Vocab:
    """Keys seen at least ``min_count`` times get ids 1.. by decreasing count (ties: increasing key)."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    vc = pl.DataFrame({"k": np.asarray(keys)}).group_by("k").len()
    vc = vc.filter(pl.col("len") >= min_count).sort(["len", "k"], descending=[True, False])
    return Vocab(vc["k"].to_numpy().astype(np.int64))


def fit_vocab_blocks(blocks: Iterable[np.ndarray], min_count: int = 1) -> Vocab:
    """:func:`fit_vocab` of the concatenated ``blocks`` (the same Vocab), holding a (key, count) table per distinct
    key instead of the keys: each block is counted, and the block tables are merged into the running table once they
    hold as many rows as it (or ``_MERGE_ROWS``), so the merging work stays O(distinct log(rows / distinct))."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    acc: pl.DataFrame | None = None
    pending: list[pl.DataFrame] = []
    held = 0
    for x in blocks:
        if len(x) == 0:
            continue
        vc = pl.DataFrame({"k": np.asarray(x, np.int64)}).group_by("k").len()
        pending.append(vc.with_columns(pl.col("len").cast(pl.Int64)))
        held += len(vc)
        if held >= max(_MERGE_ROWS, 0 if acc is None else len(acc)):
            acc, pending, held = _merge_counts(acc, pending), [], 0
    acc = _merge_counts(acc, pending)
    if acc is None:
        return Vocab(np.zeros(0, np.int64))
    acc = acc.filter(pl.col("len") >= min_count).sort(["len", "k"], descending=[True, False])
    return Vocab(acc["k"].to_numpy().astype(np.int64))


def _merge_counts(acc: pl.DataFrame | None, pending: list[pl.DataFrame]) -> pl.DataFrame | None:
    parts = ([] if acc is None else [acc]) + pending
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return pl.concat(parts).group_by("k").agg(pl.col("len").sum())


class KeyTable:
    """Distinct int64 keys -> provisional codes 0, 1, ... in order of insertion: a vectorized open-addressing hash
    table (linear probing, at most half full), for the keys of one field while its vocabulary is fitted.

    Every operation is numpy over a whole block: a probe round gathers the slots of all keys still unresolved, so a
    block costs a few passes (most keys resolve at their home slot) instead of a sort or a search per key.
    """

    def __init__(self, slots: int = 0):
        slots = max(int(slots or _TABLE_SLOTS), 2)
        self.n = 0
        self.keys = np.zeros(0, np.int64)       # key of each code (capacity grows by doubling; valid: [:n])
        self._alloc(1 << (slots - 1).bit_length())

    def _alloc(self, slots: int) -> None:
        self._bits = slots.bit_length() - 1
        self._slot_key = np.zeros(slots, np.int64)
        self._slot_code = np.full(slots, -1, np.int32)   # -1: empty

    def _home(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((keys.view(np.uint64) * _HASH_MULT) >> np.uint64(64 - self._bits)).astype(np.intp)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """int32 code of each key, -1 where absent."""
        keys = np.ascontiguousarray(keys, np.int64)
        mask = (1 << self._bits) - 1
        s = self._home(keys)
        code, sk = self._slot_code[s], self._slot_key[s]
        hit = sk == keys
        out = np.where(hit, code, -1).astype(np.int32, copy=False)
        todo = np.flatnonzero(~hit & (code >= 0))     # home slot held by another key: probe on
        st, kt = s[todo], keys[todo]
        while len(todo):
            st = (st + 1) & mask
            code, sk = self._slot_code[st], self._slot_key[st]
            hit = sk == kt
            out[todo[hit]] = code[hit]
            go = ~hit & (code >= 0)
            todo, st, kt = todo[go], st[go], kt[go]
        return out

    def _append_keys(self, keys: np.ndarray) -> None:
        need = self.n + len(keys)
        if len(self.keys) < need:
            grown = np.empty(max(need, 2 * len(self.keys)), np.int64)
            grown[:self.n] = self.keys[:self.n]
            self.keys = grown
        self.keys[self.n:need] = keys
        self.n = need

    def _rehash(self, need: int) -> None:
        slots = len(self._slot_code)
        while 2 * need > slots:
            slots *= 2
        self._alloc(slots)
        self._place(self.keys[:self.n], np.arange(self.n, dtype=np.int32))

    def add(self, keys: np.ndarray) -> None:
        """Insert distinct keys none of which is in the table yet; they get the next codes in their order."""
        keys = np.ascontiguousarray(keys, np.int64)
        if len(keys) == 0:
            return
        first = self.n
        self._append_keys(keys)
        if 2 * self.n > len(self._slot_code):               # rehash everything into a table at most half full
            self._rehash(self.n)
        else:
            self._place(keys, np.arange(first, self.n, dtype=np.int32))

    def _place(self, keys: np.ndarray, codes: np.ndarray) -> None:
        mask = (1 << self._bits) - 1
        s = self._home(keys)
        todo = np.arange(len(keys))
        while len(todo):
            st = s[todo]
            free = self._slot_code[st] < 0
            cand, cs = todo[free], st[free]
            self._slot_code[cs] = codes[cand]           # several keys may claim one slot: one of them lands
            won = self._slot_code[cs] == codes[cand]
            self._slot_key[cs[won]] = keys[cand[won]]
            placed = np.zeros(len(todo), bool)
            placed[np.flatnonzero(free)[won]] = True
            todo = todo[~placed]
            s[todo] = (s[todo] + 1) & mask               # the slot tried is now taken: the next one


def per_field(option, name: str, default):
    """An option given for all fields (scalar) or per field name (mapping)."""
    if isinstance(option, Mapping):
        return option.get(name, default)
    return default if option is None else option


def check_splits(codes: np.ndarray, label: np.ndarray | RawStore, source: str, split_by: tuple[str, object],
                 label_hint: str = "", valid_fraction: float = 0.0) -> None:
    """Refuse splits a CTR model cannot be trained or scored on: an empty train or test split, or a split (train,
    test, or a non-empty validation split) whose labels are all one class.

    ``split_by`` is the option (name, value) that made the split, named when a split is empty; ``label_hint`` says
    how labels were made (for example the threshold), added when a class is missing. ``label`` may be the
    :class:`RawStore` itself, whose labels are then read block by block.
    """
    n = len(codes)
    name, value = split_by
    for i, nm in ((TRAIN, "train"), (TEST, "test")):
        if not (codes == i).any():
            if name == "days":
                fix = f"accepted: 2 <= days <= {n}"
            else:
                fix = f"choose a {'larger' if nm == 'test' else 'smaller'} {name}"
            raise OptionError(name, f"{name}={value!r} leaves the {nm} split empty ({n} rows were parsed); {fix}")
    if valid_fraction > 0 and not (codes == VALID).any():
        raise OptionError("valid_fraction", f"valid_fraction={valid_fraction!r} leaves the validation split empty "
                                            f"({n} rows were parsed); choose a larger one or 0 for no validation")
    rows = np.bincount(codes, minlength=len(SPLITS))
    if isinstance(label, RawStore):
        ones = np.zeros(len(SPLITS), np.int64)
        step = 1 << 22
        for lo in range(0, n, step):
            y = label.chunk("label", lo, lo + step)
            ones += np.bincount(codes[lo:lo + len(y)], weights=y == 1, minlength=len(SPLITS)).astype(np.int64)
    else:
        ones = np.bincount(codes, weights=np.asarray(label) == 1, minlength=len(SPLITS)).astype(np.int64)
    for i, nm in enumerate(SPLITS):
        if rows[i] and ones[i] in (0, rows[i]):
            raise DataFormatError(source, f"the {nm} split's {rows[i]} labels are all {int(ones[i] > 0)}; a CTR "
                                          f"model needs both classes in every split{label_hint}")


@dataclasses.dataclass
class _Fitted:
    """One field's vocabulary as finalize fits it: ``keys[i]`` is the key of id i+1; ``perm[code]`` the id of each
    provisional code (0: out of vocabulary) for the codes written to ``codes_path``; ``id_counts`` per id."""

    keys: np.ndarray
    perm: np.ndarray
    id_counts: np.ndarray
    codes_path: str

    @property
    def size(self) -> int:
        return len(self.keys) + 1


def _grow(counts: np.ndarray | None, n: int) -> np.ndarray | None:
    if counts is None or len(counts) >= n:
        return counts
    out = np.zeros(max(n, 2 * len(counts)), np.int64)
    out[:len(counts)] = counts
    return out


def _fit_field(store: RawStore, name: str, codes: np.ndarray, block_rows: int, min_count: int,
               vocab_split: str) -> _Fitted:
    """One pass over a field's keys: provisional codes (written to disk in place of the keys), training counts per
    code; then the ids 1.. by decreasing count (ties: increasing key) among codes seen ``min_count`` times, as
    :func:`fit_vocab` gives them."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    table = KeyTable()
    counts = np.zeros(0, np.int64)                                  # the vocabulary's counts (train or all rows)
    train = np.zeros(0, np.int64) if vocab_split == "all" else None  # training counts, for id_counts
    path = store._path(f"{name}.codes")
    with open(path, "wb") as fh:
        for lo in range(0, store.n, block_rows):
            x = store.chunk(name, lo, lo + block_rows)
            if table.n == 0:                   # the first block: every key is new
                table.add(pl.Series(x).unique().to_numpy())
                c = table.find(x)
            else:
                c = table.find(x)
                miss = np.flatnonzero(c < 0)
                if len(miss):                  # new keys: their distinct values (polars' hash unique), then codes
                    xm = x[miss]
                    table.add(pl.Series(xm).unique().to_numpy())
                    c[miss] = table.find(xm)
            counts, train = _grow(counts, table.n), _grow(train, table.n)
            cc = codes[lo:lo + len(x)]
            in_train = c if (cc == TRAIN).all() else c[cc == TRAIN]
            if train is not None:
                np.add.at(counts, c, 1)
                np.add.at(train, in_train, 1)
            else:
                np.add.at(counts, in_train, 1)
            fh.write(c.tobytes())
    n, keys = table.n, table.keys
    del table
    counts = counts[:n]
    train = counts if train is None else train[:n]
    sel = np.flatnonzero(counts >= min_count)
    order = sel[_by_count_then_key(counts[sel], keys[:n][sel])]
    perm = np.zeros(n, np.int32)
    perm[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    id_counts = np.empty(len(order) + 1, np.int64)
    id_counts[1:] = train[order]
    id_counts[0] = int(train.sum()) - int(id_counts[1:].sum())
    os.remove(store._path(name))           # the codes replace the keys (disk: 4 bytes per row instead of 8)
    return _Fitted(keys[order].copy(), perm, id_counts, path)


def _by_count_then_key(counts: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The order of distinct ``keys`` by decreasing count, ties by increasing key: one int64 sort key
    (count below, key + 1 in the low 33 bits) where they fit, as Criteo's hex values do, else a two-column sort."""
    if len(keys) == 0:
        return np.zeros(0, np.intp)
    top = int(counts.max())
    if int(keys.min()) >= -1 and int(keys.max()) < (1 << 32) and top - int(counts.min()) < (1 << 30):
        return np.argsort(((top - counts) << 33) | (keys + 1))
    return pl.DataFrame({"len": counts, "k": keys, "i": np.arange(len(keys))}).sort(
        ["len", "k"], descending=[True, False])["i"].to_numpy()


def _read_codes(fitted: _Fitted, lo: int, hi: int) -> np.ndarray:
    out = np.fromfile(fitted.codes_path, dtype=np.int32, count=hi - lo, offset=lo * 4) if hi > lo \
        else np.zeros(0, np.int32)
    if len(out) != hi - lo:
        raise OSError(f"{fitted.codes_path}: short read ({len(out)} of {hi - lo} values)")
    return out


def finalize(store: RawStore, codes: np.ndarray, writer: CacheWriter, *, min_count=1, hash_buckets=None,
             vocab_split: str = "train", bag_pooling: str = "sum", block_rows: int | None = None,
             progress: bool = False) -> tuple[Schema, dict]:
    """Fit vocabularies and write the split arrays, ``id_counts.npy`` and ``vocab.npz`` into ``writer``.

    Call :func:`check_splits` first: this writes whatever split it is given.

    Args:
        codes: uint8 [N]: the split of each stored row (0 train, 1 valid, 2 test).
        min_count / hash_buckets: an int for all fields or a mapping field name -> value; a hashed field
            (``hash_buckets`` R) takes id ``key mod R`` (missing -> 0) and ignores ``min_count``.
        vocab_split: fit vocabularies on the "train" rows (default; unseen ids are OOV) or on "all" rows (DLRM).
    Returns:
        the schema and a dict of split sizes.
    """
    if vocab_split not in ("train", "all"):
        raise ValueError(f"vocab_split must be 'train' or 'all', got {vocab_split!r}")
    t0 = time.time()
    n = store.n
    block_rows = int(block_rows or _BLOCK_ROWS)
    codes = np.asarray(codes, np.uint8)
    if len(codes) != n:
        raise ValueError(f"codes has {len(codes)} rows, the store {n}")
    vocabs: dict[str, Vocab | _Fitted | concurrent.futures.Future] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=FIT_THREADS) as pool:
        for f in store.fields:
            if f.kind != "key":
                continue
            r = per_field(hash_buckets, f.name, None)
            if r:
                if int(r) < 1:
                    raise ValueError(f"hash_buckets for {f.name!r} must be >= 1, got {r}")
                vocabs[f.name] = Vocab(np.zeros(0, np.int64), hash_buckets=int(r))
                continue
            vocabs[f.name] = pool.submit(_fit_field, store, f.name, codes, block_rows,
                                         int(per_field(min_count, f.name, 1)), vocab_split)
        try:
            vocabs = {k: v.result() if isinstance(v, concurrent.futures.Future) else v for k, v in vocabs.items()}
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the first error is raised; fields not started yet are not fitted
            raise
    sizes = tuple(vocabs[f.name].size if f.kind == "key" else f.vocab_size for f in store.fields)
    slots = tuple(f.slots for f in store.fields)
    schema = Schema(field_names=tuple(f.name for f in store.fields), vocab_sizes=sizes,
                    dense_names=tuple(store.dense_names),
                    bag_sizes=slots if any(s > 1 for s in slots) else None, bag_pooling=bag_pooling)
    split_n = {nm: int(np.count_nonzero(codes == i)) for i, nm in enumerate(SPLITS)}
    out = {nm: {"ids": _Rows(writer, f"{nm}_ids", (k, schema.num_slots), np.int32),
                "dense": _Rows(writer, f"{nm}_dense", (k, schema.num_dense), np.float32),
                "label": _Rows(writer, f"{nm}_label", (k,), np.float32)}
           for nm, k in split_n.items() if k > 0 or nm != "valid"}
    # id_counts of fitted fields come with their vocabulary; the others are counted on the training rows below
    counts = [vocabs[f.name].id_counts if isinstance(vocabs.get(f.name), _Fitted) else np.zeros(v, np.int64)
              for f, v in zip(store.fields, sizes, strict=True)]
    # each block's rows go to known positions of each split (the split rows before it), so blocks are written by
    # FIT_THREADS threads at once: the gathers, copies and positioned writes release the GIL
    lows = list(range(0, n, block_rows))
    before = np.zeros((len(lows) + 1, len(SPLITS)), np.int64)
    for b, lo in enumerate(lows):
        before[b + 1] = before[b] + np.bincount(codes[lo:lo + block_rows], minlength=len(SPLITS))

    counts_lock = threading.Lock()

    def write_block(b: int) -> None:
        lo = lows[b]
        hi = min(n, lo + block_rows)
        ids = np.empty((hi - lo, schema.num_slots), np.int32)
        c = 0
        for f in store.fields:
            v = vocabs.get(f.name)
            if isinstance(v, _Fitted):
                ids[:, c] = v.perm[_read_codes(v, lo, hi)]
            else:
                x = store.chunk(f.name, lo, hi)
                ids[:, c:c + f.slots] = (v.lookup(x) if f.kind == "key" else x).reshape(hi - lo, f.slots)
            c += f.slots
        dense, label, cc = store.chunk("dense", lo, hi), store.chunk("label", lo, hi), codes[lo:hi]
        for i, nm in enumerate(SPLITS):
            k = int(before[b + 1, i] - before[b, i])
            if nm not in out or k == 0:
                continue
            sel = _rows_of(cc, i, k)
            at = int(before[b, i])
            out[nm]["ids"].write_at(at, ids[sel])
            out[nm]["dense"].write_at(at, dense[sel])
            out[nm]["label"].write_at(at, label[sel])
            if i == TRAIN:
                c = 0
                for fi, f in enumerate(store.fields):
                    if not isinstance(vocabs.get(f.name), _Fitted):
                        x = ids[sel, c:c + f.slots].ravel()
                        x = np.bincount(x[x >= 0], minlength=sizes[fi])
                        with counts_lock:
                            counts[fi] += x
                    c += f.slots

    bar = _bar(progress, n, "write cache")
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=FIT_THREADS) as pool:
            futures = [pool.submit(write_block, b) for b in range(len(lows))]
            try:
                for b, fut in enumerate(futures):
                    fut.result()
                    if bar is not None:
                        bar.update(min(n, lows[b] + block_rows) - lows[b])
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    finally:
        for arrays in out.values():
            for a in arrays.values():
                a.close()
        if bar is not None:
            bar.close()
    for nm, arrays in out.items():
        for a in arrays.values():
            if a.rows != split_n[nm]:
                raise RuntimeError(f"{a.path}: wrote {a.rows} of {split_n[nm]} rows")
    np.save(writer.file("id_counts.npy"), np.concatenate(counts) if counts else np.zeros(0, np.int64))
    np.savez(writer.file("vocab.npz"), **{k: v.keys for k, v in vocabs.items() if isinstance(v, _Fitted)})
    return schema, {"splits": {nm: split_n[nm] for nm in out}, "finalize_seconds": round(time.time() - t0, 3)}


def _rows_of(cc: np.ndarray, i: int, k: int) -> slice | np.ndarray:
    """The ``k`` positions of split ``i`` in a block's split codes: a slice (no copy) where they are contiguous, as
    Criteo's and Avazu's day splits are, else their indices."""
    if k == len(cc):
        return slice(None)
    first = int(np.argmax(cc == i))
    if first + k <= len(cc) and (cc[first:first + k] == i).all():
        return slice(first, first + k)
    return np.flatnonzero(cc == i)


class _Rows:
    """One ``.npy`` array of the cache, written in blocks of rows at given positions by positioned writes, from
    any thread (the writer creates the file and its header; its pages are never mapped here, so what is written
    does not count as resident memory). ``rows`` counts the rows written."""

    def __init__(self, writer: CacheWriter, name: str, shape: tuple[int, ...], dtype):
        arr = writer.array(name, shape, dtype)
        self.rows, self.path = 0, writer.file(name + ".npy")
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        self._dtype = np.dtype(dtype)
        self._fd = None
        self._lock = threading.Lock()
        if isinstance(arr, np.memmap):
            self._offset = int(arr.offset)
            self._fd = os.open(self.path, os.O_WRONLY)

    def write_at(self, row: int, rows: np.ndarray) -> None:
        buf = np.ascontiguousarray(rows, self._dtype)
        if buf.size and self._fd is not None:   # zero-width arrays (no dense features) hold no bytes
            view = memoryview(buf).cast("B")
            pos = self._offset + row * self._row_bytes
            while len(view):
                k = os.pwrite(self._fd, view, pos)
                view, pos = view[k:], pos + k
        with self._lock:
            self.rows += len(buf)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _bar(progress: bool, total: int, desc: str, unit: str = "row"):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True)


def read_ahead(items: Iterable, depth: int = 1) -> Iterator:
    """``items``, produced by a background thread up to ``depth`` ahead of the consumer, so that reading the next
    block (file reads release the GIL) overlaps the work on this one. An exception raised while producing reaches
    the consumer after the items before it, as it would without the thread. When the consumer stops (an error, or
    closing this iterator), the thread stops and closes ``items``."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        it = iter(items)
        try:
            for x in it:
                if not put((x, None)):
                    return
            put((end, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            put((end, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=produce, name="mlet-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            x, err = q.get()
            if x is end:
                if err is not None:
                    raise err
                return
            yield x
    finally:
        stop.set()
        t.join()


def parse_text_blocks(store: RawStore, blocks: Iterable, bar, split: Callable, parse: Callable,
                      quick: Callable | None = None) -> None:
    """Split each text block into checked lines, parse them into ``store``, and advance the byte progress bar.

    ``split(block)`` returns the block's good lines (``.data``, ``.line_no``); ``parse(lines)`` returns the arrays
    for :meth:`RawStore.append`, or a function of no arguments that returns them (the conversions left once the
    block is known to be good, which then run in the writer thread). ``quick(block)``, if given, returns the block's
    lines unchecked (:func:`~mlet_jax.data._text.quick_lines`) or None; ``parse`` of those raises
    :class:`~mlet_jax.data._text.RaggedLines` when they are not whole rows, and the block is then split and parsed
    the checked way. Two background threads read the next block and run ``quick`` on it (:func:`read_ahead`), and
    finish and store the last one, while this one is parsed; blocks are stored in order, and an error is raised
    after the blocks before it were stored. The store and the bar are closed whatever happens.
    """
    def read(blocks):
        for block in blocks:
            yield block, (quick(block) if quick is not None else None)

    def store_block(arrays):
        store.append(*(arrays() if callable(arrays) else arrays))

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
            pending = None
            for block, lines in read_ahead(read(blocks)):
                arrays = None
                if lines is not None:
                    try:
                        arrays = parse(lines)
                    except RaggedLines:
                        arrays = None
                if arrays is None:
                    lines = split(block)
                    if len(lines.line_no):
                        arrays = parse(lines)
                if arrays is not None:
                    if pending is not None:
                        pending.result()  # one block in flight: memory stays a few blocks
                    pending = writer.submit(store_block, arrays)
                if bar is not None:
                    bar.n = block.bytes_read
                    bar.refresh()
            if pending is not None:
                pending.result()
    finally:
        store.close()
        if bar is not None:
            bar.close()
