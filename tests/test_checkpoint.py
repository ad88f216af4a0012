"""Checkpoints: exact restore, exact resume of an interrupted fit, NaN stop keeping the last good checkpoint, export."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from mlet_jax.checkpoint import Checkpointer
from mlet_jax.data.base import batches, epoch_order
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.serving import export_inference, load_inference
from mlet_jax.training import NonFiniteLossError, TrainConfig, Trainer, fit

BATCH = 32


@pytest.fixture(scope="module")
def data():
    return make_synthetic(0, n_train=20 * BATCH + 5, n_valid=0, n_test=64, vocab_sizes=(5, 20, 50), num_dense=2)


def _trainer(kind="mlet", sparse=True):
    spec = EmbeddingSpec(kind=kind, dim=4, inner_dim=8 if kind == "mlet" else None)
    model = DLRM(vocab_sizes=(5, 20, 50), num_dense=2, embedding=spec, bottom_mlp=(8,), top_mlp=(8,))
    return Trainer(model, TrainConfig(optimizer=OptimizerSpec("adagrad", lr=0.05), sparse_tables=sparse))


def _leaves(state):
    state = state.replace(rng=jax.random.key_data(state.rng))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def _fit(trainer, data, **kw):
    return fit(trainer, data.train, batch_size=BATCH, epochs=2, seed=3, progress=False, **kw)


@pytest.mark.parametrize("sparse", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["sparse", "dense"])
def test_save_restore_roundtrip(tmp_path, data, sparse):
    trainer = _trainer(sparse=sparse)
    b = next(batches(data.train, BATCH, seed=0))
    state = trainer.init(0, b)
    for _ in range(3):
        state, _ = trainer.train_step(state, b)
    want = _leaves(state)
    with Checkpointer(tmp_path) as ck:
        assert ck.save(state, {"epoch": 0, "batch": 3}) == 3
        restored, pos = ck.restore(trainer.init(1, b))
    assert pos["epoch"] == 0 and pos["batch"] == 3 and pos["step"] == 3
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, w in zip(_leaves(restored), want, strict=True):
        np.testing.assert_array_equal(a, w)
    # The restored state trains on exactly like the original: two more steps of each, dropout key included.
    original, copy = state, restored
    for _ in range(2):
        original, _ = trainer.train_step(original, b)
        copy, _ = trainer.train_step(copy, b)
    assert int(copy.step) == 5
    for a, w in zip(_leaves(copy), _leaves(original), strict=True):
        np.testing.assert_array_equal(a, w)


def test_fit_resumes_into_the_shapes_of_its_own_initial_state(tmp_path, data, monkeypatch):
    # fit initializes a state, and when a checkpoint exists restores into its shapes only (the initial state is
    # freed first), so a resumed run holds one state (plus a block of rows), not two.
    trainer = _trainer()
    _fit(trainer, data, checkpoint_dir=tmp_path, checkpoint_every=7)
    seen = []
    restore = Checkpointer.restore

    def spy(self, target, *a, **kw):
        seen.append(all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(target)))
        return restore(self, target, *a, **kw)

    monkeypatch.setattr(Checkpointer, "restore", spy)
    resumed, _ = _fit(trainer, data, checkpoint_dir=tmp_path)
    assert seen == [True] and int(resumed.step) == 40
    given = trainer.init(0, next(batches(data.train, BATCH, seed=0)))
    _fit(trainer, data, checkpoint_dir=tmp_path, state=given)  # a caller's state is the caller's: restored into
    assert seen == [True, False]


class _Interrupt(Exception):
    pass


def test_interrupted_and_resumed_fit_equals_uninterrupted(tmp_path, data):
    trainer = _trainer()
    full, _ = _fit(trainer, data)  # 2 epochs x 20 steps
    assert int(full.step) == 40

    def crash(step, state):
        if step == 27:  # mid second epoch, 6 steps after the checkpoint at step 21
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _fit(trainer, data, checkpoint_dir=tmp_path, checkpoint_every=7, callbacks=[crash])
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 21
    resumed, hist = _fit(trainer, data, checkpoint_dir=tmp_path, checkpoint_every=7)
    assert int(resumed.step) == 40
    assert hist.train_samples == (40 - 21 - 1) * BATCH
    for a, w in zip(_leaves(resumed), _leaves(full), strict=True):
        np.testing.assert_array_equal(a, w)
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 40  # the end of training is saved too
    # Resuming a finished run trains nothing and returns the final state; other data settings are refused.
    again, _ = _fit(trainer, data, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(_leaves(again)[0], _leaves(full)[0])
    with pytest.raises(ValueError, match="same seed, batch size"):
        fit(trainer, data.train, batch_size=BATCH, epochs=2, seed=4, progress=False, checkpoint_dir=tmp_path)


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, data):
    train = data.train.take(slice(None))
    train.dense = train.dense.copy()
    # A NaN feature in the first row of the 11th batch of epoch 0: step 11's loss is NaN.
    nan_step, good = 11, 9
    train.dense[epoch_order(len(train), seed=3, shuffle=True, epoch=0)[(nan_step - 1) * BATCH], 0] = np.nan
    with pytest.raises(NonFiniteLossError) as err:
        fit(_trainer(), train, batch_size=BATCH, epochs=1, seed=3, progress=False, checkpoint_dir=tmp_path,
            checkpoint_every=3)
    msg = str(err.value)
    assert f"became nan at step {nan_step}" in msg
    assert f"last good checkpoint is step {good}" in msg and str(tmp_path) in msg
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == good
        state, _ = ck.restore(_trainer().init(0, next(batches(data.train, BATCH, seed=0))))
    assert all(np.isfinite(x).all() for x in _leaves(state))


def test_nan_without_checkpoint_names_step(data):
    train = data.train.take(slice(None))
    train.dense = np.full_like(train.dense, np.nan)
    with pytest.raises(NonFiniteLossError, match="at step 1;"):
        fit(_trainer(), train, batch_size=BATCH, epochs=1, seed=3, progress=False)


@pytest.mark.parametrize("kind", ["mlet", pytest.param("single", marks=pytest.mark.slow)])
def test_export_collapsed_inference_model(tmp_path, data, kind):
    trainer = _trainer(kind)
    b = next(batches(data.train, BATCH, seed=0))
    state = trainer.init(0, b)
    for _ in range(2):
        state, _ = trainer.train_step(state, b)
    path = export_inference(tmp_path / "model.npz", trainer.model, state.params)
    assert not list(tmp_path.glob("*.tmp*"))
    with np.load(path, allow_pickle=False) as z:  # readable without JAX or pickle
        cfg = json.loads(str(z["__config__"]))
        table = z["embeddings/table"]
    assert cfg["settings"]["embedding"]["__embedding_spec__"]["kind"] == "single"
    assert table.shape == (75, 4) and cfg["field_offsets"] == [0, 5, 25]
    model, params, _ = load_inference(path)
    assert model.embedding.kind == "single" and model.vocab_sizes == (5, 20, 50)
    want = trainer.model.apply({"params": state.params}, b["dense"], b["ids"])
    got = model.apply({"params": params}, b["dense"], b["ids"])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_export_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not an mlet_jax inference export"):
        load_inference(tmp_path / "x.npz")
