"""The on-disk cache: memory-mapped ``.npy`` arrays plus ``schema.json``, written atomically.

Layout of a cache directory::

    schema.json                 format, schema, options and source fingerprint, split sizes, skipped rows
    {train,valid,test}_ids.npy     int32 [N, num_slots]   (valid_* only when there is a validation split)
    {train,valid,test}_dense.npy   float32 [N, num_dense]
    {train,valid,test}_label.npy   float32 [N]
    id_counts.npy               int64 [total_rows]: training counts, field f at ``schema.offsets[f]``
    vocab.npz                   per dictionary-encoded field: the raw key of id i+1 (id 0 is out-of-vocabulary)

Everything is written into ``<dir>.tmp-<pid>-<n>`` and renamed to ``<dir>`` only after ``schema.json`` is complete,
so an interrupted build never leaves a directory that looks valid.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Mapping

import numpy as np

from mlet_jax.data.base import Dataset, Schema, Split

FORMAT = "mlet_jax.cache/1"
SPLITS = ("train", "valid", "test")
_counter = itertools.count()


def read_meta(path: str) -> dict | None:
    """The cache's ``schema.json`` or None if ``path`` is not a complete cache."""
    try:
        with open(os.path.join(path, "schema.json")) as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def open_cache(path: str, meta: dict | None = None) -> Dataset:
    """Open a cache directory as a :class:`Dataset` of read-only memory maps."""
    meta = meta or read_meta(path)
    if meta is None:
        raise FileNotFoundError(f"{path}: not a mlet_jax cache (no valid schema.json)")
    schema = Schema.from_json(meta["schema"])
    splits = {}
    for name in SPLITS:
        if name not in meta["splits"]:
            continue
        arrs = {k: _load(os.path.join(path, f"{name}_{k}.npy")) for k in ("ids", "dense", "label")}
        splits[name] = Split(**arrs)
    counts = np.load(os.path.join(path, "id_counts.npy"))
    id_counts = tuple(np.asarray(c) for c in np.split(counts, np.cumsum(schema.vocab_sizes)[:-1]))
    return Dataset(schema=schema, train=splits["train"], test=splits["test"], valid=splits.get("valid"),
                   id_counts=id_counts, name=meta.get("name", "dataset"),
                   meta={k: v for k, v in meta.items() if k != "schema"} | {"cache_dir": os.path.abspath(path)})


def _load(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # numpy cannot memory-map an array with no elements
        return np.load(path)


class CacheWriter:
    """Builds a cache in a temporary sibling directory; :meth:`commit` renames it into place."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        parent = os.path.dirname(self.path)
        os.makedirs(parent, exist_ok=True)
        _remove_stale_temps(self.path)
        self.tmp = f"{self.path}.tmp-{os.getpid()}-{next(_counter)}"
        os.makedirs(self.tmp)
        self._arrays: list[np.memmap] = []

    def file(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        if 0 in shape:
            arr = np.zeros(shape, dtype)
            np.save(self.file(name + ".npy"), arr)
            return arr
        arr = np.lib.format.open_memmap(self.file(name + ".npy"), mode="w+", dtype=dtype, shape=shape)
        self._arrays.append(arr)
        return arr

    def commit(self, meta: Mapping) -> str:
        for a in self._arrays:
            a.flush()
            del a
        self._arrays.clear()
        with open(self.file("schema.json.part"), "w") as fh:
            json.dump({**meta, "format": FORMAT}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(self.file("schema.json.part"), self.file("schema.json"))
        old = None
        if os.path.exists(self.path):
            old = f"{self.path}.old-{os.getpid()}-{next(_counter)}"
            os.rename(self.path, old)
        os.rename(self.tmp, self.path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        self._arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _remove_stale_temps(path: str) -> None:
    """Remove temp/old siblings left by builds whose process is gone."""
    parent, base = os.path.split(path)
    for entry in os.listdir(parent):
        for tag in (".tmp-", ".old-"):
            if entry.startswith(base + tag):
                pid = entry[len(base) + len(tag):].split("-")[0]
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fingerprint(paths: list[str]) -> list[dict]:
    """What identifies the input files: absolute path, size and modification time."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"path": os.path.abspath(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out
