"""The pandas pipeline the Criteo prepare benchmarks compare against (``bench_data``, ``bench_prepare``).

It does the work of ``python -m mlet_jax.data prepare criteo`` on a file pandas can hold: read every column,
``log(1 + max(x, 0))`` the dense ones (missing -> 0), give each category an id by its training-day count (0 for
unseen or missing), split 6/7 train then test and valid halves of the last day, and save each split's arrays. This
module imports only numpy (and pandas when called), so a benchmark's pandas child measures pandas alone.
"""

from __future__ import annotations

import os

import numpy as np


def pandas_criteo(path: str, out: str) -> int:
    """Prepare Criteo ``path`` into ``out`` (``{train,test,valid}_{ids,dense,label}.npy``); returns the row count."""
    import pandas as pd  # the optional `bench` extra

    dense_cols = [f"I{i}" for i in range(1, 14)]
    cat_cols = [f"C{i}" for i in range(1, 27)]
    df = pd.read_csv(path, sep="\t", header=None, names=["label", *dense_cols, *cat_cols],
                     dtype={"label": np.int64, **dict.fromkeys(dense_cols, np.float64), **dict.fromkeys(cat_cols, str)},
                     keep_default_na=False, na_values={c: [""] for c in dense_cols})
    n = len(df)
    dense = np.log1p(df[dense_cols].fillna(0).clip(lower=0).to_numpy()).astype(np.float32)
    per = n // 7
    train_end, test_end = n - per, n - per + -(-per // 2)
    ids = np.empty((n, 26), np.int32)
    for j, c in enumerate(cat_cols):
        col = df[c]
        vc = col.iloc[:train_end].value_counts()
        mapping = pd.Series(np.arange(1, len(vc) + 1, dtype=np.int32), index=vc.index)
        ids[:, j] = col.map(mapping).fillna(0).to_numpy().astype(np.int32)
    label = df["label"].to_numpy().astype(np.float32)
    os.makedirs(out, exist_ok=True)
    for nm, sl in (("train", slice(0, train_end)), ("test", slice(train_end, test_end)), ("valid", slice(test_end, n))):
        np.save(os.path.join(out, f"{nm}_ids.npy"), ids[sl])
        np.save(os.path.join(out, f"{nm}_dense.npy"), dense[sl])
        np.save(os.path.join(out, f"{nm}_label.npy"), label[sl])
    return n
