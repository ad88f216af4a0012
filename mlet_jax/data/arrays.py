"""The ``.npz`` arrays format (``PREFIX_train.npz``, ``PREFIX_test.npz``), as written by the peer benchmark's
``gen_data.py``: ``dense`` float32 [N, 13], ``sparse`` int32 [N, 26], ``vocab`` int64 [26], ``label`` float32 [N]
(``prob``, the oracle probability, is ignored). The widths are read from the files, not assumed.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from mlet_jax.data.base import Dataset, Schema, Split
from mlet_jax.data.errors import DataFormatError

KEYS = ("dense", "sparse", "vocab", "label")


def _load(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise DataFormatError(path, "file is empty")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DataFormatError(path, f"missing array(s) {missing}; found {sorted(z.files)}")
            return {k: z[k] for k in KEYS}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(path, f"not a readable .npz file ({e})") from e


def _check(path: str, a: dict[str, np.ndarray], vocab: np.ndarray | None) -> Split:
    d, s, v, y = a["dense"], a["sparse"], a["vocab"], a["label"]
    if d.ndim != 2 or s.ndim != 2 or y.ndim != 1 or v.ndim != 1:
        raise DataFormatError(path, f"expected dense [N, D], sparse [N, F], label [N], vocab [F]; got shapes "
                                    f"{d.shape}, {s.shape}, {y.shape}, {v.shape}")
    n = y.shape[0]
    for k, x in (("dense", d), ("sparse", s)):
        if x.shape[0] != n:
            raise DataFormatError(path, f"{k} has {x.shape[0]} rows but label has {n}", column=k)
    if s.shape[1] != v.shape[0]:
        raise DataFormatError(path, f"sparse has {s.shape[1]} fields but vocab has {v.shape[0]}", column="sparse")
    for k, x in (("sparse", s), ("vocab", v)):
        if not np.issubdtype(x.dtype, np.integer):
            raise DataFormatError(path, f"{k} must be integers, got {x.dtype}", column=k)
    for k, x in (("dense", d), ("label", y)):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataFormatError(path, f"{k} must be numbers, got {x.dtype}", column=k)
    if (v < 1).any():
        f = int(np.argmax(v < 1))
        raise DataFormatError(path, f"vocab[{f}] = {v[f]} must be >= 1", column="vocab")
    if vocab is not None and not np.array_equal(v, vocab):
        raise DataFormatError(path, "vocab differs from the train file's vocab", column="vocab")
    bad = (s < 0) | (s >= v[None, :])
    if bad.any():
        r, f = map(int, np.argwhere(bad)[0])
        raise DataFormatError(path, f"sparse field {f}: id {s[r, f]} outside [0, {v[f]})", row=r, column="sparse")
    if not np.isfinite(d).all():
        r, c = map(int, np.argwhere(~np.isfinite(d))[0])
        raise DataFormatError(path, f"dense column {c} is {d[r, c]}", row=r, column="dense")
    bad = (y != 0) & (y != 1)
    if bad.any():
        r = int(np.argmax(bad))
        raise DataFormatError(path, f"label {y[r]} is not 0 or 1", row=r, column="label")
    return Split(dense=d.astype(np.float32, copy=False), ids=s.astype(np.int32, copy=False),
                 label=y.astype(np.float32, copy=False))


def load_arrays(prefix: str, *, valid_fraction: float = 0.0, seed: int = 0) -> Dataset:
    """Load ``PREFIX_train.npz`` and ``PREFIX_test.npz``; ``valid_fraction`` carves a seeded random validation
    split out of the training rows."""
    prefix = str(prefix)
    tr_path, te_path = f"{prefix}_train.npz", f"{prefix}_test.npz"
    tr = _load(tr_path)
    train = _check(tr_path, tr, None)
    te = _load(te_path)
    test = _check(te_path, te, tr["vocab"])
    if train.dense.shape[1] != test.dense.shape[1]:
        raise DataFormatError(te_path, f"dense has {test.dense.shape[1]} columns, train has "
                                       f"{train.dense.shape[1]}", column="dense")
    valid = None
    if valid_fraction:
        if not 0 < valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
        perm = np.random.default_rng(seed).permutation(len(train))
        k = int(round(len(train) * valid_fraction))
        valid, train = train.take(np.sort(perm[:k])), train.take(np.sort(perm[k:]))
    v = tr["vocab"]
    schema = Schema(field_names=tuple(f"C{i + 1}" for i in range(len(v))), vocab_sizes=tuple(int(x) for x in v),
                    dense_names=tuple(f"I{i + 1}" for i in range(train.dense.shape[1])))
    return Dataset(schema=schema, train=train, test=test, valid=valid, name="arrays",
                   meta={"input": os.path.abspath(prefix), "files": [tr_path, te_path]})
