"""Shared build machinery: raw keys on disk, vocabularies (min-count OOV, hashing), split writing.

A loader parses its file block by block into a :class:`RawStore` (label, dense features, one int64 *key* per
categorical value: hex value, integer or a stable 63-bit hash of the string; -1 for missing), appended to flat binary
files so that the file never has to fit in memory. :func:`finalize` then fits one vocabulary per field on the
training rows and writes the split arrays of the cache, block by block.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from mlet_jax.data.base import Schema
from mlet_jax.data.cache import SPLITS, CacheWriter
from mlet_jax.data.errors import DataFormatError
from mlet_jax.data.options import OptionError

MISSING_KEY = -1
TRAIN, VALID, TEST = 0, 1, 2
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_MASK63 = np.uint64((1 << 63) - 1)


def string_keys(values: pl.Series | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Stable int64 keys of strings: FNV-1a 64 masked to 63 bits; null and "" -> MISSING_KEY.

    Hashes the distinct values only (dictionary encoding), one vectorized numpy step per byte position.
    """
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
        pos = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        return np.where(self._sorted[pos] == keys, self._ids[pos], 0).astype(np.int32)


def fit_vocab(keys: np.ndarray, min_count: int = 1) -> Vocab:
    """Keys seen at least ``min_count`` times get ids 1.. by decreasing count (ties: increasing key)."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    vc = pl.DataFrame({"k": np.asarray(keys)}).group_by("k").len()
    vc = vc.filter(pl.col("len") >= min_count).sort(["len", "k"], descending=[True, False])
    return Vocab(vc["k"].to_numpy().astype(np.int64))


def per_field(option, name: str, default):
    """An option given for all fields (scalar) or per field name (mapping)."""
    if isinstance(option, Mapping):
        return option.get(name, default)
    return default if option is None else option


def check_splits(codes: np.ndarray, label: np.ndarray, source: str, split_by: tuple[str, object],
                 label_hint: str = "", valid_fraction: float = 0.0) -> None:
    """Refuse splits a CTR model cannot be trained or scored on: an empty train or test split, or a split (train,
    test, or a non-empty validation split) whose labels are all one class.

    ``split_by`` is the option (name, value) that made the split, named when a split is empty; ``label_hint`` says
    how labels were made (for example the threshold), added when a class is missing.
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
    ones = np.bincount(codes, weights=np.asarray(label) == 1, minlength=len(SPLITS)).astype(np.int64)
    for i, nm in enumerate(SPLITS):
        if rows[i] and ones[i] in (0, rows[i]):
            raise DataFormatError(source, f"the {nm} split's {rows[i]} labels are all {int(ones[i] > 0)}; a CTR "
                                          f"model needs both classes in every split{label_hint}")


def finalize(store: RawStore, codes: np.ndarray, writer: CacheWriter, *, min_count=1, hash_buckets=None,
             vocab_split: str = "train", bag_pooling: str = "sum", block_rows: int = 1 << 19,
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
    codes = np.asarray(codes, np.uint8)
    fit_rows = np.flatnonzero(codes == TRAIN) if vocab_split == "train" else None
    vocabs: dict[str, Vocab] = {}
    for f in store.fields:
        if f.kind != "key":
            continue
        r = per_field(hash_buckets, f.name, None)
        if r:
            if int(r) < 1:
                raise ValueError(f"hash_buckets for {f.name!r} must be >= 1, got {r}")
            vocabs[f.name] = Vocab(np.zeros(0, np.int64), hash_buckets=int(r))
            continue
        keys = store.read(f.name)
        vocabs[f.name] = fit_vocab(keys if fit_rows is None else keys[fit_rows],
                                   int(per_field(min_count, f.name, 1)))
    sizes = tuple(vocabs[f.name].size if f.kind == "key" else f.vocab_size for f in store.fields)
    slots = tuple(f.slots for f in store.fields)
    schema = Schema(field_names=tuple(f.name for f in store.fields), vocab_sizes=sizes,
                    dense_names=tuple(store.dense_names),
                    bag_sizes=slots if any(s > 1 for s in slots) else None, bag_pooling=bag_pooling)
    split_n = {nm: int((codes == i).sum()) for i, nm in enumerate(SPLITS)}
    out = {nm: {"ids": writer.array(f"{nm}_ids", (k, schema.num_slots), np.int32),
                "dense": writer.array(f"{nm}_dense", (k, schema.num_dense), np.float32),
                "label": writer.array(f"{nm}_label", (k,), np.float32)}
           for nm, k in split_n.items() if k > 0 or nm != "valid"}
    pos = dict.fromkeys(out, 0)
    counts = [np.zeros(v, np.int64) for v in sizes]
    cols = {f.name: store.read(f.name) for f in store.fields}
    label_all, dense_all = store.read("label"), store.read("dense")
    bar = _bar(progress, n, "write cache")
    for lo in range(0, n, block_rows):
        hi = min(n, lo + block_rows)
        ids = np.empty((hi - lo, schema.num_slots), np.int32)
        c = 0
        for f in store.fields:
            x = np.asarray(cols[f.name][lo:hi])
            ids[:, c:c + f.slots] = (vocabs[f.name].lookup(x) if f.kind == "key" else x).reshape(hi - lo, f.slots)
            c += f.slots
        dense, label, cc = np.asarray(dense_all[lo:hi]), np.asarray(label_all[lo:hi]), codes[lo:hi]
        for i, nm in enumerate(SPLITS):
            if nm not in out:
                continue
            sel = np.flatnonzero(cc == i)
            k = len(sel)
            if k == 0:
                continue
            p = pos[nm]
            out[nm]["ids"][p:p + k] = ids[sel]
            out[nm]["dense"][p:p + k] = dense[sel]
            out[nm]["label"][p:p + k] = label[sel]
            pos[nm] = p + k
            if i == TRAIN:
                c = 0
                for fi, f in enumerate(store.fields):
                    x = ids[sel, c:c + f.slots].ravel()
                    counts[fi] += np.bincount(x[x >= 0], minlength=sizes[fi])
                    c += f.slots
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    np.save(writer.file("id_counts.npy"), np.concatenate(counts) if counts else np.zeros(0, np.int64))
    np.savez(writer.file("vocab.npz"), **{k: v.keys for k, v in vocabs.items() if not v.hash_buckets})
    return schema, {"splits": {nm: split_n[nm] for nm in out}, "finalize_seconds": round(time.time() - t0, 3)}


def _bar(progress: bool, total: int, desc: str, unit: str = "row"):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True)


def parse_text_blocks(store: RawStore, blocks: Iterable, bar, split: Callable, parse: Callable) -> None:
    """Split each text block into checked lines, parse them into ``store``, and advance the byte progress bar.

    ``split(block)`` returns the block's good lines (``.data``, ``.line_no``); ``parse(lines)`` returns the arrays
    for :meth:`RawStore.append`. The store and the bar are closed whatever happens.
    """
    try:
        for block in blocks:
            lines = split(block)
            if len(lines.line_no):
                store.append(*parse(lines))
            if bar is not None:
                bar.n = block.bytes_read
                bar.refresh()
    finally:
        store.close()
        if bar is not None:
            bar.close()
