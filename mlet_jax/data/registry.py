"""``load_dataset(name, data_dir, **options)``: every dataset behind one call, with the memory-mapped cache.

File datasets (criteo, avazu, movielens, table) are parsed once into a cache directory (see
:mod:`mlet_jax.data.cache`) that records the options and the input files' size and modification time; a later call
with the same options opens the memory maps, a call with other options (or a changed input) rebuilds it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time

from mlet_jax.data.base import Dataset
from mlet_jax.data.cache import CacheWriter, fingerprint, open_cache, read_meta

FILE_DATASETS = ("criteo", "avazu", "movielens", "table")
NAMES = ("synthetic", *FILE_DATASETS, "arrays")
BUILD_VERSION = 1
_NOT_IN_KEY = ("block_bytes",)  # options that change speed, not content


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
    """Build (or reuse) the cache of dataset ``name`` read from ``data_dir`` in directory ``out``."""
    if name not in FILE_DATASETS:
        raise ValueError(f"prepare: dataset must be one of {FILE_DATASETS}, got {name!r}")
    mod = _module(name)
    opts = resolve_options(name, options)
    inputs = mod.input_files(data_dir, opts)
    key = {"name": name, "build_version": BUILD_VERSION, "source": fingerprint(inputs),
           "options": {k: v for k, v in opts.items() if k not in _NOT_IN_KEY}}
    meta = read_meta(out)
    if meta is not None and not rebuild and all(meta.get(k) == v for k, v in key.items()):
        return open_cache(out, meta)
    t0 = time.time()
    with CacheWriter(out) as writer:
        schema, info = mod.build(data_dir, writer, progress=progress, **opts)
        shutil.rmtree(writer.file("_raw"), ignore_errors=True)
        writer.commit({**key, "input": os.path.abspath(data_dir), "schema": schema.to_json(), **info,
                       "build_seconds": round(time.time() - t0, 3)})
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
        from mlet_jax.data.synthetic import make_synthetic

        return make_synthetic(**options)
    if name == "arrays":
        from mlet_jax.data.arrays import load_arrays

        if data_dir is None:
            raise ValueError("arrays: data_dir must be the PREFIX of PREFIX_train.npz / PREFIX_test.npz")
        return load_arrays(data_dir, **options)
    if name not in FILE_DATASETS:
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
            return open_cache(data_dir, meta)
        src = meta.get("input")
        if not src or not os.path.exists(src):
            raise ValueError(f"{data_dir}: prepared with options {meta['options']}; other options were asked "
                             f"and its input {src!r} is gone, so it cannot be rebuilt")
        return prepare(name, src, data_dir, progress=progress, rebuild=rebuild, **options)
    out = cache_dir or default_cache_dir(name, data_dir)
    return prepare(name, data_dir, out, progress=progress, rebuild=rebuild, **options)
