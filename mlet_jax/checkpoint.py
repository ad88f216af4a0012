"""Train-state checkpoints (orbax): save, exact resume, recovery from damaged or foreign checkpoints.

Checkpoints: :class:`Checkpointer` saves the whole :class:`~mlet_jax.training.TrainState` (parameters, optimizer and
row-sparse Adagrad state, step, RNG key) plus a small JSON record of where the data stream stands (epoch, batches
done in it, seed, batch size) under ``directory/<step>/``. Orbax writes each step to a temporary directory and renames
it when complete, so a crash never leaves a half-written checkpoint that looks valid (and the next open removes
such a leftover). Restoring skips a damaged newest step with a :class:`CheckpointWarning` and takes the newest
intact one; a checkpoint of another model raises :class:`CheckpointMismatchError` naming the array and both shapes
(docs/faults_checkpoints.md). Saving is synchronous: the
train step donates its input state, so a background writer could read freed buffers. ``fit(checkpoint_dir=...)``
uses this to save every N steps and to resume exactly (see :func:`mlet_jax.training.fit`).

Restoring takes a *target*: a state (or ``jax.eval_shape`` of one) with the shapes, dtypes and, for sharded runs,
the shardings to restore into; arrays are read straight into those shardings, so no host holds a whole sharded table.

The export of a trained model for serving lives in :mod:`mlet_jax.serving` (this module needs no model code).
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp


def _to_saveable(state) -> dict:
    # Typed PRNG keys are not plain arrays: store their raw key data (the implementation's name goes in the JSON).
    return flax.serialization.to_state_dict(state.replace(rng=jax.random.key_data(state.rng)))


def _abstract(tree):
    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree_util.tree_map(leaf, tree)


class CheckpointWarning(UserWarning):
    """A checkpoint step was skipped (damaged) or a checkpoint directory held none (training starts fresh)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the target: another model (an array's path or shape differs)."""


class CheckpointDamagedError(OSError):
    """No checkpoint step (or not the one asked for) in the directory could be read."""


class _CommittedRenamePath(ocp.path.atomicity.AtomicRenameTemporaryPath):
    # Orbax's own atomic-rename save, which writes commit_success.txt into the temporary folder before renaming it.
    # Its listing counts any folder named like a step as finalized (on a local disk): an empty "25/" made
    # ``latest_step()`` 25 and blocked resume. Requiring orbax's commit file as well makes such folders invisible.
    @classmethod
    async def validate_final(cls, final_path):
        await super().validate_final(final_path)
        if not await asyncio.to_thread((final_path / ocp.path.atomicity.COMMIT_SUCCESS_FILE).exists):
            raise ocp.path.atomicity.ValidationError(f"{final_path} holds no {ocp.path.atomicity.COMMIT_SUCCESS_FILE}")


def _reason(e: BaseException) -> str:
    # tensorstore messages run to kilobytes (a JSON spec of the store); the first clause says what broke
    text = (str(e).strip().splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
    return f"{type(e).__name__}: {text[:240]}"


def _quiet_closed_loop_callbacks() -> None:
    """Drop the ``RuntimeError: Event loop is closed`` reports a failed orbax restore leaves behind.

    Orbax runs a restore in a fresh event loop and closes it on the first failed read, while tensorstore's other
    reads are still in flight; each of those reports, when it completes, that its loop is gone (through
    ``sys.unraisablehook``, during or after the failed restore: so the filter goes in before a restore). Only
    those reports are dropped; everything else goes to the hook that was there.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop_reports", False):
        return

    def hook(u):
        if u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed" and u.object is None:
            return
        previous(u)

    hook._drops_closed_loop_reports = True
    sys.unraisablehook = hook


def _flat(tree) -> dict[str, Any]:
    def name(k):
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))

    return {"/".join(map(name, path)): v for path, v in jax.tree_util.tree_leaves_with_path(tree)}


class Checkpointer:
    """Save and restore train states under one directory (keeping the newest ``keep``).

    Only folders orbax finalized count as checkpoints: a step folder is written as
    ``<step>.orbax-checkpoint-tmp-*``, gets orbax's ``commit_success.txt`` and is then renamed to ``<step>``. Any
    other entry of the directory (files, folders of other names, a numeric folder without the commit file) is
    ignored and never deleted. Temporary folders left by a killed writer are removed when the directory is opened
    (orbax's ``cleanup_tmp_directories``).

    Args:
        directory: where step directories go (created if missing).
        keep: how many checkpoints to keep (oldest deleted first); ``None`` keeps all.
    """

    def __init__(self, directory: str | os.PathLike, keep: int | None = 2):
        self.directory = Path(directory).absolute()
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                            cleanup_tmp_directories=True, temporary_path_class=_CommittedRenamePath)
        self._mgr = ocp.CheckpointManager(self.directory, options=opts, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def save(self, state, data_position: dict | None = None) -> int:
        """Save ``state`` under its step number and return the step (``data_position`` must be JSON)."""
        step = int(state.step)
        meta = {"step": step, "rng_impl": str(jax.random.key_impl(state.rng)), **(data_position or {})}
        self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_saveable(state)),
                                                     meta=ocp.args.JsonSave(meta)), force=True)
        self._mgr.wait_until_finished()
        return step

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def delete(self, step: int) -> None:
        """Delete checkpoint ``step`` (one this program wrote)."""
        self._mgr.delete(step)

    def restore(self, target, step: int | None = None, *, set_aside_damaged: bool = False) -> tuple[Any, dict]:
        """``(state, data_position)`` of ``step`` (default: the newest intact one), restored into ``target``.

        With ``step=None`` a step that cannot be read (a missing or truncated file) is skipped with a
        :class:`CheckpointWarning` naming it and the next older one is tried.

        Args:
            target: a train state or its ``jax.eval_shape``; shardings on its leaves are honoured.
            step: which checkpoint; ``None`` for the newest intact one.
            set_aside_damaged: rename each skipped step folder to ``<step>.damaged`` (kept, not deleted), so
                that training resumed from an older step can save that step number again.
        Raises:
            FileNotFoundError: no checkpoint (or not that step) in the directory.
            CheckpointMismatchError: the checkpoint holds another model (one line: the array's path, both shapes).
            CheckpointDamagedError: the step asked for, or every step, could not be read.
        """
        steps = self.all_steps()
        if step is not None and step not in steps or not steps:
            raise FileNotFoundError(f"no checkpoint{'' if step is None else f' for step {step}'} in {self.directory}"
                                    f" (have: {steps})")
        keyless = target.replace(rng=jax.eval_shape(jax.random.key_data, target.rng))
        abstract = _abstract(flax.serialization.to_state_dict(keyless))
        damaged = []
        _quiet_closed_loop_callbacks()
        for s in ([step] if step is not None else sorted(steps, reverse=True)):
            try:
                out = self._restore_step(s, abstract)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # orbax and tensorstore raise many types for unreadable files
                damaged.append(f"step {s}: {_reason(e)}")
                if step is not None:
                    raise CheckpointDamagedError(f"checkpoint step {s} in {self.directory} is damaged "
                                                 f"({_reason(e)})") from None
                moved = self._set_aside(s) if set_aside_damaged else None
                warnings.warn(f"skipping damaged checkpoint step {s} in {self.directory} ({_reason(e)})"
                              + (f"; moved it to {moved.name}" if moved else ""), CheckpointWarning, stacklevel=2)
                continue
            meta = dict(out["meta"])
            state = flax.serialization.from_state_dict(keyless, dict(out["state"]))
            return state.replace(rng=jax.random.wrap_key_data(state.rng, impl=meta["rng_impl"])), meta
        raise CheckpointDamagedError(f"no intact checkpoint in {self.directory}: " + "; ".join(damaged))

    def _restore_step(self, step: int, abstract) -> dict:
        # The stored shapes are compared first, from orbax's metadata: a mismatch is then one line, not a
        # tensorstore read error (which orbax raises only after starting every other read).
        stored = self._mgr.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        if stored is None:
            raise FileNotFoundError(f"{self.directory / str(step)} holds no readable train state")
        _check_fits(_flat(stored), _flat(abstract), f"checkpoint step {step} in {self.directory}")
        return self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                               meta=ocp.args.JsonRestore()))

    def _set_aside(self, step: int) -> Path:
        src = self.directory / str(step)
        dst = src.with_name(f"{step}.damaged")
        n = 1
        while dst.exists():
            n += 1
            dst = src.with_name(f"{step}.damaged-{n}")
        src.rename(dst)
        self._mgr.reload()
        return dst

    def close(self) -> None:
        self._mgr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_fits(stored: dict, want: dict, what: str) -> None:
    missing, extra = sorted(want.keys() - stored.keys()), sorted(stored.keys() - want.keys())
    shapes = [(k, tuple(stored[k].shape), tuple(want[k].shape))
              for k in sorted(want.keys() & stored.keys(), key=lambda k: (not k.startswith("params/"), k))
              if tuple(stored[k].shape) != tuple(want[k].shape)]
    problems = ([f"{k} is {a} in the checkpoint but {b} in this model" for k, a, b in shapes]
                + [f"{k} is missing from the checkpoint" for k in missing]
                + [f"{k} is in the checkpoint but not in this model" for k in extra])
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise CheckpointMismatchError(f"{what} does not fit this model: {problems[0]}{more}; resume with the model "
                                      "settings it was written with, or use a new checkpoint_dir")
