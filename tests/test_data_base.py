"""mlet_jax.data.base: batches() yields every row once, as float32 / int32 / float32 copies of the split's rows, from
numpy arrays, memory maps (other dtypes converted) and other array-likes alike."""

import numpy as np

from mlet_jax.data.base import Split, batches, epoch_order


class _Rows:
    """An array-like that only supports row indexing (neither an ndarray nor a memory map)."""

    def __init__(self, a):
        self.a, self.shape, self.dtype = a, a.shape, a.dtype

    def __getitem__(self, idx):
        return self.a[idx]

    def __len__(self):
        return len(self.a)


def test_batches_are_the_sorted_rows_of_the_epoch_order(tmp_path):
    rng = np.random.default_rng(0)
    n = 20_000  # more than 4 blocks of 4096: the block shuffle
    dense = rng.normal(size=(n, 3))  # float64: converted
    ids = np.memmap(tmp_path / "ids.bin", np.int64, "w+", shape=(n, 4))  # a memory map of int64: converted
    ids[:] = rng.integers(0, 1000, (n, 4))
    label = (rng.random(n) < 0.3).astype(np.float64)
    for split in (Split(dense=dense, ids=ids, label=label),
                  Split(dense=_Rows(dense), ids=_Rows(np.asarray(ids)), label=_Rows(label))):
        order = epoch_order(n, seed=7, shuffle=True, epoch=2)
        seen = []
        for i, b in enumerate(batches(split, 1000, seed=7, epoch=2)):
            idx = np.sort(order[1000 * i:1000 * (i + 1)])
            assert b["dense"].dtype == np.float32 and b["ids"].dtype == np.int32 and b["label"].dtype == np.float32
            assert type(b["ids"]) is np.ndarray and b["ids"].flags["C_CONTIGUOUS"]
            np.testing.assert_array_equal(b["dense"], dense[idx].astype(np.float32))
            np.testing.assert_array_equal(b["ids"], np.asarray(ids)[idx].astype(np.int32))
            np.testing.assert_array_equal(b["label"], label[idx].astype(np.float32))
            seen.append(idx)
        assert i == n // 1000 - 1
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))
