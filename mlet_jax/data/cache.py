"""The on-disk cache: memory-mapped ``.npy`` arrays plus ``schema.json``, written atomically.

Layout of a cache directory::

    schema.json                 format, schema, options and source fingerprint, split sizes, skipped rows
    {train,valid,test}_ids.npy     int32 [N, num_slots]   (valid_* only when there is a validation split)
    {train,valid,test}_dense.npy   float32 [N, num_dense]
    {train,valid,test}_label.npy   float32 [N]
    id_counts.npy               int64 [total_rows]: training counts, field f at ``schema.offsets[f]``
    vocab.npz                   per dictionary-encoded field: the raw key of id i+1 (id 0 is out-of-vocabulary)

Everything is written into ``<dir>.tmp-<pid>-<n>`` and renamed to ``<dir>`` only after ``schema.json`` is complete,
so an interrupted build never leaves a directory that looks valid. The writer owns only what it made: ``<dir>`` must
be missing, an empty folder, or one of our caches (format tag in ``schema.json`` and no file we did not write), and
it may not be, hold, or lie inside an input (:func:`check_out`). A temporary folder is removed on any exception and
on SIGTERM/SIGHUP; one left by a killed process (its lock file no longer held) is removed by the next build of the
same ``<dir>``.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Mapping

import numpy as np

from mlet_jax.data.base import Dataset, Schema, Split
from mlet_jax.data.options import OptionError

FORMAT = "mlet_jax.cache/1"
SPLITS = ("train", "valid", "test")
_counter = itertools.count()
LOCK = ".mlet_jax-writer.lock"  # inside a temporary folder only: held (flock) by the live writer
_OWN_FILE = re.compile(r"^(schema\.json|id_counts\.npy|vocab\.npz|(train|valid|test)_(ids|dense|label)\.npy)$")
_MIB = 1 << 20


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
    """Builds a cache in a temporary sibling directory; :meth:`commit` renames it into place.

    Use it as a context manager: the temporary folder is removed if the block raises (KeyboardInterrupt included)
    and, in the main thread, SIGTERM and SIGHUP raise ``SystemExit`` so that it is removed on those too.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        _check_target(self.path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        remove_stale_temps(self.path)
        self.tmp = f"{self.path}.tmp-{os.getpid()}-{next(_counter)}"
        os.makedirs(self.tmp)
        self._lock = open(os.path.join(self.tmp, LOCK), "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        self._arrays: list[np.memmap] = []
        self._handlers: dict[int, object] = {}

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
        self._arrays.clear()
        with open(self.file("schema.json.part"), "w") as fh:
            json.dump({**meta, "format": FORMAT}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(self.file("schema.json.part"), self.file("schema.json"))
        _check_target(self.path)  # still ours: nobody put a file there while we were building
        os.remove(self.file(LOCK))  # a complete cache in a temporary name is recognized by its schema.json
        if os.path.isdir(self.path) and not os.listdir(self.path):
            os.rename(self.tmp, self.path)  # replaces an empty folder in one step
        elif os.path.exists(self.path):
            old = f"{self.path}.old-{os.getpid()}-{next(_counter)}"
            os.rename(self.path, old)
            os.rename(self.tmp, self.path)
            _remove_own(old, "schema.json")
        else:
            os.rename(self.tmp, self.path)
        self._release()
        return self.path

    def abort(self) -> None:
        self._arrays.clear()
        try:
            if os.path.isdir(self.tmp):
                _remove_own(self.tmp, LOCK)
        except OSError:  # never mask the exception that made us abort
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if not self._lock.closed:
            self._lock.close()

    def __enter__(self) -> CacheWriter:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) is signal.SIG_DFL:
                    self._handlers[sig] = signal.signal(sig, _exit_on_signal)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None or os.path.exists(self.tmp):
                self.abort()
        finally:
            for sig, old in self._handlers.items():
                signal.signal(sig, old)
            self._handlers.clear()


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def _entries(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _check_target(path: str) -> None:
    """Raise unless ``path`` is missing, an empty folder, or one of our caches holding only our files."""
    if not os.path.lexists(path):
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise OptionError("out", f"out {path!r}: {parent!r} is a file, so no folder can be made there")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OptionError("out", f"out {path!r}: cannot write in {parent!r} (permission denied)")
        return
    if os.path.islink(path):
        raise OptionError("out", f"out {path!r} is a symbolic link; name the folder itself")
    if not os.path.isdir(path):
        raise OptionError("out", f"out {path!r} is a file, not a folder; prepare writes only to a new folder, an "
                                 f"empty one or one of its caches")
    names = _entries(path)
    if not names:
        return
    if read_meta(path) is None:
        raise OptionError("out", f"out {path!r} is a folder that is not a mlet_jax cache (it holds "
                                 f"{_few(names)}); nothing was written: name a new or empty folder")
    foreign = [n for n in names if not _OWN_FILE.match(n)]
    if foreign:
        raise OptionError("out", f"out {path!r} is a mlet_jax cache that also holds {_few(foreign)}, which prepare "
                                 f"did not write; nothing was written: move them out or name another folder")
    if not os.access(path, os.W_OK | os.X_OK) or not os.access(os.path.dirname(path), os.W_OK | os.X_OK):
        raise OptionError("out", f"out {path!r}: cannot replace this cache (permission denied)")


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_out(out: str, inputs: list[str]) -> None:
    """Refuse an ``out`` that is, holds or lies inside an input, or that holds anything not ours."""
    real = os.path.realpath(out)
    for inp in inputs:
        r = os.path.realpath(inp)
        if real == r:
            raise OptionError("out", f"out {out!r} is the input {inp!r}; name a separate folder for the cache")
        if os.path.commonpath([real, r]) == real:
            raise OptionError("out", f"out {out!r} contains the input {inp!r}; name a separate folder for the "
                                     f"cache")
        if os.path.commonpath([real, r]) == r:
            raise OptionError("out", f"out {out!r} lies inside the input {inp!r}; name a folder outside it")
    _check_target(os.path.abspath(out))


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary and old siblings of ``path`` that a killed build left; return what was removed.

    Only folders this module made qualify: a temporary folder whose lock file is no longer held by a live writer,
    or a complete cache of ours under a temporary or old name whose process is gone.
    """
    parent, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r"\.(tmp|old)-(\d+)-\d+$")
    removed = []
    for entry in _entries(parent):
        m = pattern.match(entry)
        full = os.path.join(parent, entry)
        if not m or not os.path.isdir(full) or os.path.islink(full):
            continue
        lock = os.path.join(full, LOCK)
        if os.path.exists(lock):
            try:
                fh = open(lock)
            except OSError:
                continue
            with fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live writer holds it
                _remove_own(full, LOCK)
        elif not _alive(int(m.group(2))) and read_meta(full) is not None:
            _remove_own(full, "schema.json")
        elif not _alive(int(m.group(2))) and not _entries(full):
            os.rmdir(full)  # what an interrupted removal of ours leaves last
        else:
            continue
        removed.append(full)
    return removed


def _remove_own(path: str, mark: str) -> None:
    """Remove a folder of ours, its mark (lock file or schema.json) last, so that a removal cut short still
    leaves it recognizable as ours (or empty) for :func:`remove_stale_temps`."""
    for name in _entries(path):
        if name != mark:
            full = os.path.join(path, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)
    if os.path.exists(os.path.join(path, mark)):
        os.remove(os.path.join(path, mark))
    os.rmdir(path)


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
    """What identifies the input files: absolute path, size, modification time, a hash of the first and last MiB."""
    out = []
    for p in paths:
        st = os.stat(p)
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            h.update(fh.read(_MIB))
            if st.st_size > _MIB:
                fh.seek(max(_MIB, st.st_size - _MIB))
                h.update(fh.read(_MIB))
        out.append({"path": os.path.abspath(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                    "head_tail_sha256": h.hexdigest()})
    return out


def source_changes(recorded: list[dict] | None, current: list[dict]) -> str | None:
    """How the inputs differ from the recorded fingerprint (None if they match)."""
    if not recorded:
        return "the cache records no input fingerprint"
    old = {r.get("path"): r for r in recorded}
    for c in current:
        r = old.get(c["path"])
        if r is None:
            return f"input {c['path']} is not the one it was built from"
        if r.get("size") != c["size"]:
            return f"input {c['path']} changed size ({r.get('size')} -> {c['size']} bytes)"
        if "head_tail_sha256" in r and r["head_tail_sha256"] != c["head_tail_sha256"]:
            return f"input {c['path']} changed content (its first or last MiB differs)"
        if r.get("mtime_ns") != c["mtime_ns"]:
            return f"input {c['path']} was modified (mtime changed)"
    if len(old) != len(current):
        return "the set of input files changed"
    return None
