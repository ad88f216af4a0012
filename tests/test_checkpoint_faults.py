"""Checkpoint faults (issue 14): damaged steps, foreign folders, another model, an empty folder, divergence, kill -9.

Each case fails on the code before the fix; docs/faults_checkpoints.md tabulates what the user sees.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mlet_jax.checkpoint import Checkpointer, CheckpointMismatchError, CheckpointWarning
from mlet_jax.data.base import batches
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import NonFiniteLossError, TrainConfig, Trainer, fit

BATCH = 32
REPO = Path(__file__).resolve().parents[1]
# The same model and data in this process and in the kill -9 subprocess.
SETUP = """
from mlet_jax.data.synthetic import make_synthetic
from mlet_jax.embeddings import EmbeddingSpec
from mlet_jax.models.dlrm import DLRM
from mlet_jax.optim import OptimizerSpec
from mlet_jax.training import TrainConfig, Trainer, fit

data = make_synthetic(0, n_train=20 * 32 + 5, n_valid=0, n_test=64, vocab_sizes=(5, 20, 50), num_dense=2)


def trainer(dim=4, opt="adagrad", lr=0.05):
    spec = EmbeddingSpec(kind="mlet", dim=dim, inner_dim=8)
    model = DLRM(vocab_sizes=(5, 20, 50), num_dense=2, embedding=spec, bottom_mlp=(8,), top_mlp=(8,))
    return Trainer(model, TrainConfig(optimizer=OptimizerSpec(opt, lr=lr)))
"""


@pytest.fixture(scope="module")
def data():
    return make_synthetic(0, n_train=20 * BATCH + 5, n_valid=0, n_test=64, vocab_sizes=(5, 20, 50), num_dense=2)


def _trainer(dim=4, opt="adagrad", lr=0.05):
    spec = EmbeddingSpec(kind="mlet", dim=dim, inner_dim=8)
    model = DLRM(vocab_sizes=(5, 20, 50), num_dense=2, embedding=spec, bottom_mlp=(8,), top_mlp=(8,))
    return Trainer(model, TrainConfig(optimizer=OptimizerSpec(opt, lr=lr)))


def _fit(data, trainer=None, epochs=2, **kw):
    return fit(trainer or _trainer(), data.train, batch_size=BATCH, epochs=epochs, seed=3, progress=False, **kw)


def _leaves(state):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state.replace(rng=jax.random.key_data(state.rng)))]


@pytest.fixture(scope="module")
def full(data):
    """Two uninterrupted epochs (40 steps): what every resumed run must equal bit for bit."""
    return _leaves(_fit(data)[0])


def _first_epoch(data, path) -> Path:
    """One epoch with checkpoints at steps 14 and 20 (7, 14, 20 written; keep=2)."""
    with pytest.warns(CheckpointWarning, match="training starts fresh"):
        _fit(data, epochs=1, checkpoint_dir=path, checkpoint_every=7)
    with Checkpointer(path) as ck:
        assert ck.all_steps() == [14, 20]
    return path


def _missing_chunk(step_dir: Path):
    chunks = list((step_dir / "state" / "d").iterdir())  # orbax's OCDBT data files of the arrays
    assert chunks
    for f in chunks:
        f.unlink()


def _truncated(step_dir: Path):
    for f in step_dir.rglob("*"):
        if f.is_file():
            os.truncate(f, f.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_missing_chunk, _truncated], ids=["missing_chunk", "truncated_files"])
def test_damaged_newest_step_is_skipped_and_the_older_one_restored(tmp_path, data, full, damage, monkeypatch):
    ck_dir = _first_epoch(data, tmp_path / "ck")
    damage(ck_dir / "20")
    reports = []  # before: 24 "RuntimeError: Event loop is closed" reports from orbax's failed read
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    with pytest.warns(CheckpointWarning, match=r"skipping damaged checkpoint step 20 in .*ck \(.*\); moved it to "
                                               r"20\.damaged") as rec:
        state, hist = _fit(data, checkpoint_dir=ck_dir, checkpoint_every=7)
    skipped = [str(w.message) for w in rec if "skipping" in str(w.message)]
    assert len(skipped) == 1 and "\n" not in skipped[0]
    # resumed from step 14: 40 - 14 - 1 timed steps, and exactly the uninterrupted parameters
    assert int(state.step) == 40 and hist.train_samples == (40 - 14 - 1) * BATCH
    for a, w in zip(_leaves(state), full, strict=True):
        np.testing.assert_array_equal(a, w)
    assert (ck_dir / "20.damaged").is_dir()  # kept for inspection, not deleted
    with Checkpointer(ck_dir) as ck:
        assert ck.all_steps() == [35, 40]
    time.sleep(0.2)  # the failed read's leftover callbacks report within milliseconds
    assert reports == []


def test_non_checkpoint_entries_are_ignored_and_kept(tmp_path, data, full):
    ck_dir = _first_epoch(data, tmp_path / "ck")
    (ck_dir / "25").mkdir()  # a stray empty numeric folder: it blocked resume (latest_step() was 25)
    (ck_dir / "1000").mkdir()
    (ck_dir / "notes.txt").write_text("mine")
    (ck_dir / "plots").mkdir()
    with Checkpointer(ck_dir) as ck:
        assert ck.latest_step() == 20
    state, hist = _fit(data, checkpoint_dir=ck_dir, checkpoint_every=7)
    assert hist.train_samples == (40 - 20 - 1) * BATCH
    for a, w in zip(_leaves(state), full, strict=True):
        np.testing.assert_array_equal(a, w)
    assert (ck_dir / "25").is_dir() and (ck_dir / "1000").is_dir() and (ck_dir / "plots").is_dir()
    assert (ck_dir / "notes.txt").read_text() == "mine"


def test_another_model_is_one_line_naming_the_parameter_and_both_shapes(tmp_path, data):
    ck_dir = _first_epoch(data, tmp_path / "ck")
    other = _trainer(dim=8)
    abstract = jax.eval_shape(lambda: other.init(0, next(batches(data.train, 1, seed=0))))  # no init compile
    with pytest.raises(CheckpointMismatchError) as err:
        _fit(data, trainer=other, state=abstract, checkpoint_dir=ck_dir)
    msg = str(err.value)
    assert "\n" not in msg and err.value.__cause__ is None and err.value.__context__ is None  # no orbax chain
    assert f"checkpoint step 20 in {ck_dir} does not fit this model: params/" in msg
    assert re.search(r"params/\S+ is \((\d+, )?4,?\) in the checkpoint but \((\d+, )?8,?\) in this model", msg), msg
    with Checkpointer(ck_dir) as ck:
        assert ck.all_steps() == [14, 20]  # a foreign checkpoint is not touched


def test_empty_checkpoint_folder_says_training_starts_fresh(tmp_path, data):
    (tmp_path / "ck").mkdir()
    with pytest.warns(CheckpointWarning, match=rf"no checkpoint in {tmp_path / 'ck'}: training starts fresh"):
        state, _ = _fit(data, epochs=1, checkpoint_dir=tmp_path / "ck")
    assert int(state.step) == 20


def test_divergence_names_a_healthy_checkpoint_that_trains_on_at_a_lower_lr(tmp_path, data):
    ck_dir = tmp_path / "ck"
    kw = dict(checkpoint_dir=ck_dir, log_every=1)
    with pytest.warns(CheckpointWarning, match="starts fresh"):
        _, h1 = _fit(data, epochs=1, checkpoint_every=4, **kw)  # 20 healthy steps at lr=0.05
    # lr=3e6 from there: step 21's loss 0.46 (computed before its update), step 22's 6.5e36, step 23's inf
    with pytest.raises(NonFiniteLossError) as err, pytest.warns(CheckpointWarning) as rec:
        _fit(data, _trainer(lr=3e6), checkpoint_every=1, **kw)
    msg = str(err.value)
    assert "became inf at step 23" in msg
    # step 21 was saved (its loss was fine) and taken back when its own state gave 6.5e36 at step 22; step 22 was
    # never saved. Before: "the last good checkpoint is step 22", finite and diverged.
    assert f"last good checkpoint is step 20 in {ck_dir}" in msg
    assert any("removed checkpoint step 21: the loss computed on it (step 22)" in str(w.message) for w in rec)
    assert any("not checkpointing step 22" in str(w.message) for w in rec)
    with Checkpointer(ck_dir) as ck:
        assert ck.latest_step() == 20
    state, h3 = _fit(data, checkpoint_every=4, **kw)  # as the message advises: same directory, lower lr
    assert int(state.step) == 40 and np.isfinite(h3.losses).all()
    assert max(h3.losses) < 2 * np.mean(h1.losses[-5:])  # trains on at the healthy level


def _run(script: str, *args, timeout=120, log=None):
    cmd = [sys.executable, "-c", SETUP + textwrap.dedent(script), *map(str, args)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if log is not None:  # in the background, output to a file (a pipe nobody reads could fill and block it)
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_kill9_during_a_checkpoint_write_leaves_nothing_half_written(tmp_path, data, full):
    ck_dir = tmp_path / "ck"
    marker = tmp_path / "writing"
    # The subprocess hangs in the write of step 10 just before orbax's rename, with every file (even the commit
    # file) already in the temporary folder: the most complete a killed write can be.
    p = _run("""
        import asyncio, sys, time
        from pathlib import Path
        import mlet_jax.checkpoint as C
        import orbax.checkpoint as ocp
        original = C._CommittedRenamePath.finalize

        async def finalize(self):
            if self.get_final().name == "10":
                (self.get() / ocp.path.atomicity.COMMIT_SUCCESS_FILE).write_text("written")
                Path(sys.argv[2]).write_text("x")
                time.sleep(120)
            await original(self)

        C._CommittedRenamePath.finalize = finalize
        fit(trainer(), data.train, batch_size=32, epochs=2, seed=3, progress=False, checkpoint_dir=sys.argv[1],
            checkpoint_every=5)
    """, ck_dir, marker, log=(tmp_path / "log.txt").open("w"))
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert p.poll() is None and time.time() < deadline, (tmp_path / "log.txt").read_text()[-3000:]
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    assert p.returncode == -signal.SIGKILL
    names = sorted((x.name for x in ck_dir.iterdir()), key=len)
    assert len(names) == 2 and names[0] == "5" and names[1].startswith("10.orbax-checkpoint-tmp")
    with Checkpointer(ck_dir) as ck:  # opening removes the dead writer's temporary folder (in the background)
        assert ck.all_steps() == [5]  # the half-written step is not one
        deadline = time.time() + 10
        while any("tmp" in x.name for x in ck_dir.iterdir()) and time.time() < deadline:
            time.sleep(0.05)
        assert sorted(x.name for x in ck_dir.iterdir()) == ["5"]
    # the next run restores step 5 and trains on exactly
    state, hist = _fit(data, checkpoint_dir=ck_dir, checkpoint_every=5)
    assert hist.train_samples == (40 - 5 - 1) * BATCH
    for a, w in zip(_leaves(state), full, strict=True):
        np.testing.assert_array_equal(a, w)
    assert not any("tmp" in x.name for x in ck_dir.iterdir())
    with Checkpointer(ck_dir) as ck:
        assert ck.all_steps() == [35, 40]
