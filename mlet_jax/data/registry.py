"""``load_dataset(name, data_dir, **options)``: every dataset behind one call, with the memory-mapped cache.

File datasets (criteo, avazu, movielens, table) are parsed once into a cache directory (see
:mod:`mlet_jax.data.cache`) that records the options and the input files' size, modification time and a hash of
their first and last MiB. A later call with the same options and unchanged inputs opens the memory maps; other
options rebuild it; changed inputs rebuild it with a :class:`CacheRebuildWarning` saying what changed, except when the
prepared cache itself is opened (``load_dataset(name, CACHE_DIR)``), which refuses with that message instead.

Every option and both paths are checked before any file is read or written (:mod:`mlet_jax.data.options`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
import warnings

from mlet_jax.data.arrays import load_arrays
from mlet_jax.data.base import Dataset
from mlet_jax.data.cache import CacheWriter, check_out, fingerprint, open_cache, read_meta, source_changes
from mlet_jax.data.options import OptionError, check_options
from mlet_jax.data.synthetic import make_synthetic

FILE_DATASETS = ("criteo", "avazu", "movielens", "table")
PROTOCOL_DATASETS = ("bars",)  # BARS presets (mlet_jax.data.bars), chosen with --protocol
NAMES = ("synthetic", *FILE_DATASETS, *PROTOCOL_DATASETS, "arrays")
BUILD_VERSION = 2  # 2: the source fingerprint holds a hash of each input's first and last MiB
_NOT_IN_KEY = ("block_bytes",)  # options that change speed, not content


class CacheRebuildWarning(UserWarning):
    """A cache is rebuilt because its input files changed since it was built."""


def _module(name: str):
    return importlib.import_module(f"mlet_jax.data.{name}")


def resolve_options(name: str, options: dict) -> dict:
    """The loader's defaults updated with ``options``; unknown names raise with the list of known ones."""
    defaults = _module(name).DEFAULTS
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {unknown}; known: {sorted(defaults)}")
    return json.loads(json.dumps({**defaults, **options}, sort_keys=True))


def default_cache_dir(name: str, data_dir: str) -> str:
    root = os.environ.get("MLET_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mlet_jax"))
    digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
    return os.path.join(root, f"{name}-{os.path.basename(os.path.normpath(data_dir))}-{digest}")


def prepare(name: str, data_dir: str, out: str, *, progress: bool = False, rebuild: bool = False,
            **options) -> Dataset:
    """Build (or reuse) the cache of dataset ``name`` read from ``data_dir`` in directory ``out``.

    ``out`` must be missing, an empty folder or one of our caches, and may not be, hold or lie inside an input;
    options are checked first. Raises :class:`~mlet_jax.data.options.OptionError` (a ``ValueError`` naming the
    argument), ``TypeError`` for an option the dataset does not take, ``FileNotFoundError`` or
    :class:`~mlet_jax.data.errors.DataFormatError` (file, line, column) for bad input; nothing is left behind.
    """
    if name not in (*FILE_DATASETS, *PROTOCOL_DATASETS):
        raise OptionError("dataset", f"dataset must be one of {', '.join(FILE_DATASETS)}, got {name!r}")
    mod = _module(name)
    opts = resolve_options(name, options)
    check_options(name, opts)
    inputs = mod.input_files(data_dir, opts)
    check_out(out, [data_dir, *inputs])
    key = {"name": name, "build_version": BUILD_VERSION, "source": fingerprint(inputs),
           "options": {k: v for k, v in opts.items() if k not in _NOT_IN_KEY}}
    meta = read_meta(out)
    why = None
    if meta is not None and not rebuild:
        if meta.get("name") != name or meta.get("build_version") != BUILD_VERSION:
            why = f"it held a {meta.get('name')!r} cache of build version {meta.get('build_version')}"
        elif meta.get("options") != key["options"]:
            why = "other options were asked"
        else:
            why = source_changes(meta.get("source"), key["source"])
            if why is None:
                return open_cache(out, meta)
            warnings.warn(f"{out}: rebuilding the cache: {why}", CacheRebuildWarning, stacklevel=2)
    t0 = time.time()
    with CacheWriter(out) as writer:
        schema, info = mod.build(data_dir, writer, progress=progress, **opts)
        shutil.rmtree(writer.file("_raw"), ignore_errors=True)
        writer.commit({**key, "input": os.path.abspath(data_dir), "schema": schema.to_json(), **info,
                       "rebuilt_because": why, "build_seconds": round(time.time() - t0, 3)})
    return open_cache(out)


def load_dataset(name: str, data_dir: str | None = None, **options) -> Dataset:
    """Load a dataset by name.

    Args:
        name: "synthetic" (options go to :func:`mlet_jax.data.synthetic.make_synthetic`), "criteo", "avazu",
            "movielens", "table" (raw files, cached), or "arrays" (``PREFIX_{train,test}.npz``).
        data_dir: the raw input (file or folder) or a prepared cache directory; for "arrays" the PREFIX.
        **options: the loader's options (see each module's ``DEFAULTS``), plus ``cache_dir`` (where the cache of
            raw input goes; default ``$MLET_JAX_CACHE`` or ``~/.cache/mlet_jax``), ``progress`` and ``rebuild``.
    """
    if name == "synthetic":
        return make_synthetic(**options)
    if name == "arrays":
        if data_dir is None:
            raise ValueError("arrays: data_dir must be the PREFIX of PREFIX_train.npz / PREFIX_test.npz")
        return load_arrays(data_dir, **options)
    if name not in (*FILE_DATASETS, *PROTOCOL_DATASETS):
        raise ValueError(f"unknown dataset {name!r}; known: {NAMES}")
    if data_dir is None:
        raise ValueError(f"{name}: data_dir (the raw input or a prepared cache directory) is required")
    cache_dir = options.pop("cache_dir", None)
    progress, rebuild = options.pop("progress", False), options.pop("rebuild", False)
    meta = read_meta(data_dir)
    if meta is not None:  # a prepared cache
        if meta.get("name") != name:
            raise ValueError(f"{data_dir}: holds a {meta.get('name')!r} cache, not {name!r}")
        want = {k: v for k, v in resolve_options(name, options).items() if k not in _NOT_IN_KEY}
        if (not options or want == meta["options"]) and not rebuild:
            _check_source(data_dir, meta)
            return open_cache(data_dir, meta)
        src = meta.get("input")
        if not src or not os.path.exists(src):
            raise ValueError(f"{data_dir}: prepared with options {meta['options']}; other options were asked "
                             f"and its input {src!r} is gone, so it cannot be rebuilt")
        return prepare(name, src, data_dir, progress=progress, rebuild=rebuild, **options)
    out = cache_dir or default_cache_dir(name, data_dir)
    return prepare(name, data_dir, out, progress=progress, rebuild=rebuild, **options)


def _check_source(cache_dir: str, meta: dict) -> None:
    """Refuse a prepared cache whose input files still exist but changed since it was built (a cache whose inputs
    were deleted is self-contained and opens as it is)."""
    recorded = meta.get("source") or []
    paths = [r.get("path") for r in recorded]
    if not paths or not all(p and os.path.isfile(p) for p in paths):
        return
    why = source_changes(recorded, fingerprint(paths))
    if why is not None:
        raise ValueError(f"{cache_dir}: {why} since this cache was prepared; prepare it again (python -m "
                         f"mlet_jax.data prepare {meta.get('name')} --input {meta.get('input')} --out {cache_dir}) "
                         f"or pass rebuild=True")
