"""Checkpoints of arrays too large to move whole: saved and restored in blocks of rows (``Checkpointer``'s ``rows``
item), exactly, with damage detected and mismatches named. ``ROW_BLOCK_BYTES`` is lowered so that the small test
model's table (75 x 8 float32 = 2,400 bytes) and its Adagrad accumulator go by rows, in blocks of 8 rows (the
last block, rows 67..74, overlaps the one before it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import mlet_jax.checkpoint as checkpoint
from mlet_jax.checkpoint import Checkpointer, CheckpointMismatchError, CheckpointWarning
from mlet_jax.data.base import batches
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer, fit

BATCH = 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(0, n_train=20 * BATCH + 5, n_valid=0, n_test=64, vocab_sizes=(5, 20, 50), num_dense=2)


@pytest.fixture
def by_rows(monkeypatch):
    monkeypatch.setattr(checkpoint, "ROW_BLOCK_BYTES", 256)  # 8 rows of 8 float32


def _trainer(vocab=(5, 20, 50)):
    model = DLRM(vocab_sizes=vocab, num_dense=2, embedding=EmbeddingSpec(kind="mlet", dim=4, inner_dim=8),
                 bottom_mlp=(8,), top_mlp=(8,))
    return Trainer(model, TrainConfig(optimizer=OptimizerSpec("adagrad", lr=0.05)))


def _leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state.replace(rng=jax.random.key_data(state.rng)))]


def _trained(data, steps=3):
    trainer = _trainer()
    b = next(batches(data.train, BATCH, seed=0))
    state = trainer.init(0, b)
    for _ in range(steps):
        state, _ = trainer.train_step(state, b)
    return trainer, b, state


def test_large_arrays_go_by_rows_and_restore_bit_for_bit(tmp_path, data, by_rows, monkeypatch):
    trainer, b, state = _trained(data)
    want = _leaves(state)
    with Checkpointer(tmp_path) as ck:
        ck.save(state)
    index = {tuple(e["keys"]): e for e in json.loads((tmp_path / "3" / "rows" / "rows.json").read_text())}
    table = index["params", "embeddings", "table"]
    assert table == {"keys": ["params", "embeddings", "table"], "path": table["path"], "shape": [75, 8],
                     "dtype": "float32", "block_rows": 8}
    assert ("table_opt_state", "embeddings/table", "sum") in index  # the Adagrad accumulator (a key with a "/")
    assert len(list((tmp_path / "3" / "rows" / table["path"] / "c").iterdir())) == 10  # ceil(75 / 8)
    for threshold in (256, 1 << 40):  # the step's own index decides, not this process's threshold
        monkeypatch.setattr(checkpoint, "ROW_BLOCK_BYTES", threshold)
        with Checkpointer(tmp_path) as ck:
            restored, _ = ck.restore(jax.eval_shape(lambda: trainer.init(0, b)))
        got = _leaves(restored)
        assert [x.dtype for x in got] == [x.dtype for x in want]
        for a, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, w)
    # and it trains on exactly like the original
    for _ in range(2):
        state, _ = trainer.train_step(state, b)
        restored, _ = trainer.train_step(restored, b)
    for a, w in zip(_leaves(restored), _leaves(state), strict=True):
        np.testing.assert_array_equal(a, w)


def test_checkpoints_written_whole_restore_when_arrays_would_go_by_rows(tmp_path, data, monkeypatch):
    trainer, b, state = _trained(data)
    with Checkpointer(tmp_path) as ck:
        ck.save(state)
    assert not (tmp_path / "3" / "rows").exists()
    monkeypatch.setattr(checkpoint, "ROW_BLOCK_BYTES", 256)
    with Checkpointer(tmp_path) as ck:
        restored, _ = ck.restore(trainer.init(1, b))
    for a, w in zip(_leaves(restored), _leaves(state), strict=True):
        np.testing.assert_array_equal(a, w)


def _block_files(step: Path) -> list[Path]:
    index = {tuple(e["keys"]): e for e in json.loads((step / "rows" / "rows.json").read_text())}
    return sorted((step / "rows" / index["params", "embeddings", "table"]["path"] / "c").rglob("*"))


def _delete_block(step: Path):
    [f for f in _block_files(step) if f.is_file()][4].unlink()  # zarr would read it back as zeros


def _truncate_block(step: Path):
    f = [f for f in _block_files(step) if f.is_file()][4]
    os.truncate(f, f.stat().st_size - 5)


def _flip_byte(step: Path):
    f = [f for f in _block_files(step) if f.is_file()][4]
    raw = bytearray(f.read_bytes())
    raw[3] ^= 0x10  # one bit of one float: only the checksum can tell
    f.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_delete_block, _truncate_block, _flip_byte], ids=["deleted", "truncated",
                                                                                       "bit_flip"])
def test_a_damaged_block_skips_the_step(tmp_path, data, by_rows, damage):
    full, _ = fit(_trainer(), data.train, batch_size=BATCH, epochs=2, seed=3, progress=False)
    with pytest.warns(CheckpointWarning, match="training starts fresh"):
        fit(_trainer(), data.train, batch_size=BATCH, epochs=1, seed=3, progress=False, checkpoint_dir=tmp_path,
            checkpoint_every=7)
    damage(tmp_path / "20")
    with pytest.warns(CheckpointWarning, match=r"skipping damaged checkpoint step 20 .*; moved it to 20\.damaged"):
        state, hist = fit(_trainer(), data.train, batch_size=BATCH, epochs=2, seed=3, progress=False,
                          checkpoint_dir=tmp_path)
    assert hist.train_samples == (40 - 14 - 1) * BATCH  # resumed from step 14, to the uninterrupted parameters
    for a, w in zip(_leaves(state), _leaves(full), strict=True):
        np.testing.assert_array_equal(a, w)


def test_another_table_shape_is_named(tmp_path, data, by_rows):
    _, _, state = _trained(data, steps=1)
    with Checkpointer(tmp_path) as ck:
        ck.save(state)
        other = _trainer(vocab=(5, 20, 60))
        with pytest.raises(CheckpointMismatchError, match=r"params/embeddings/table is \(75, 8\) in the checkpoint "
                                                          r"but \(85, 8\) in this model"):
            ck.restore(jax.eval_shape(lambda: other.init(0, next(batches(data.train, BATCH, seed=0)))))


MESH = """
import jax, numpy as np
import mlet_jax.checkpoint as checkpoint
from mlet_jax.checkpoint import Checkpointer
from mlet_jax.distributed import make_mesh
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer

checkpoint.ROW_BLOCK_BYTES = 256
rng = np.random.default_rng(0)
b = {"dense": rng.standard_normal((8, 2)).astype(np.float32), "ids": rng.integers(0, 5, (8, 3)).astype(np.int32),
     "label": (rng.random(8) < 0.5).astype(np.float32)}
def trainer(mesh=None):
    model = DLRM(vocab_sizes=(5, 20, 55), num_dense=2, embedding=EmbeddingSpec("mlet", 4, 8), bottom_mlp=(8,),
                 top_mlp=(8,))  # 80 rows: whole row blocks on 8 devices, so the mesh adds no padding rows
    return Trainer(model, TrainConfig(optimizer=OptimizerSpec("sgd", lr=0.1), sparse_tables=False), mesh=mesh)
one = trainer()
state = one.init(0, b)
state, _ = one.train_step(state, b)
with Checkpointer(PATH) as ck:
    ck.save(state)
    sharded = trainer(make_mesh())
    target = sharded.init(1, sharded.place_batch(b))
    table = target.params["embeddings"]["table"]
    assert len(table.sharding.device_set) == 8 and table.shape == (80, 8), (table.sharding, table.shape)
    restored, _ = ck.restore(target)
got = restored.params["embeddings"]["table"]
assert got.sharding == table.sharding, (got.sharding, table.sharding)
np.testing.assert_array_equal(np.asarray(got), np.asarray(state.params["embeddings"]["table"]))
print("OK")
"""


def test_rows_restore_into_a_sharded_target(tmp_path):
    # a single-device checkpoint resumed on an 8-device mesh: each device's rows read and placed on it
    code = textwrap.dedent(MESH).replace("PATH", repr(str(tmp_path / "ck")))
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
           + " --xla_force_host_platform_device_count=8", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]
