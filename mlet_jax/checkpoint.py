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

Memory: orbax moves each array whole through a host buffer (a save copies it to the host, a restore reads it into
host memory and then places it), and the model's embedding table is one array: a Criteo-Kaggle MLET table alone is
8.6 GB, so orbax alone needed ~2x the state and a 24 GB machine could not save it. Arrays larger than
:data:`ROW_BLOCK_BYTES` that live on one device are therefore written and read in blocks of rows (tensorstore zarr3,
one chunk per block, crc32c-checked) by the ``rows`` item of the step: a save copies one block at a time, a restore
places the blocks one by one into the array's memory (a donated in-place update), so both need the state plus a few
blocks (BENCHMARKS.md, "Checkpoint memory"). Sharded arrays stay with orbax, which reads each shard into its device.

The export of a trained model for serving lives in :mod:`mlet_jax.serving` (this module needs no model code).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

ROW_BLOCK_BYTES = 64 << 20
"""Arrays on one device larger than this are saved and restored in blocks of about this many bytes of rows."""
_ROWS_INDEX = "rows.json"


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


@functools.partial(jax.jit, donate_argnums=0)
def _put_rows(array, block, start):
    return jax.lax.dynamic_update_slice(array, block, (start,) + (0,) * (array.ndim - 1))


def _blocks(n_rows: int, block_rows: int):
    # equal-sized blocks (one compiled update); the last one ends at n_rows and may overlap the one before it
    block_rows = min(block_rows, n_rows)
    for start in range(0, n_rows, block_rows):
        yield min(start, n_rows - block_rows), block_rows


def _by_rows(x) -> bool:
    """Whether an array is saved block by block: larger than one block and on a single device of one process."""
    sharding = getattr(x, "sharding", None)
    return (isinstance(x, jax.Array) and x.ndim >= 1 and x.nbytes > ROW_BLOCK_BYTES and sharding is not None
            and len(sharding.device_set) == 1 and jax.process_count() == 1)


class _RowsSave(ocp.args.CheckpointArgs):
    def __init__(self, arrays: dict[tuple[str, ...], jax.Array]):
        self.arrays = arrays


class _RowsRestore(ocp.args.CheckpointArgs):
    def __init__(self, targets: dict[tuple[str, ...], Any]):
        self.targets = targets


class _RowsHandler(ocp.CheckpointHandler):
    """The ``rows`` item: large single-device arrays as zarr3 arrays, one chunk per block of rows."""

    def save(self, directory, args: _RowsSave):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        index = []  # one entry per array; its tree path as a list of keys (a key may itself hold a "/")
        for i, (keys, x) in enumerate(args.arrays.items()):
            row_bytes = x.nbytes // x.shape[0]
            block_rows = max(1, min(x.shape[0], ROW_BLOCK_BYTES // max(1, row_bytes)))
            index.append({"keys": list(keys), "path": str(i), "shape": list(x.shape), "dtype": np.dtype(x.dtype).name,
                          "block_rows": block_rows})
            # every block is stored, zeros included, so a missing block file is damage (zarr would read zeros)
            metadata = {"shape": list(x.shape), "data_type": np.dtype(x.dtype).name,
                        "chunk_grid": {"name": "regular",
                                       "configuration": {"chunk_shape": [block_rows, *x.shape[1:]]}},
                        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}
            store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(directory / str(i))},
                             "store_data_equal_to_fill_value": True, "metadata": metadata},
                            create=True, delete_existing=True).result()
            for start in range(0, x.shape[0], block_rows):  # one block of rows on the host at a time
                stop = min(start + block_rows, x.shape[0])
                store[start:stop].write(np.asarray(x[start:stop])).result()
        (directory / _ROWS_INDEX).write_text(json.dumps(index))

    def metadata(self, directory) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
        index = json.loads((Path(directory) / _ROWS_INDEX).read_text())
        return {tuple(e["keys"]): jax.ShapeDtypeStruct(tuple(e["shape"]), np.dtype(e["dtype"])) for e in index}

    def restore(self, directory, args: _RowsRestore) -> dict[tuple[str, ...], jax.Array]:
        directory = Path(directory)
        index = {tuple(e["keys"]): e for e in json.loads((directory / _ROWS_INDEX).read_text())}
        out = {}
        for keys, target in args.targets.items():
            entry = index[keys]
            path = directory / entry["path"]
            n_rows, block_rows = entry["shape"][0], entry["block_rows"]
            # zarr reads a missing chunk as zeros: a deleted block file must be an error, not a zeroed table
            tail = "/0" * (len(entry["shape"]) - 1)  # zarr3 chunk keys: c/<block>/0/... (one chunk per block)
            n_blocks = -(-n_rows // block_rows)
            missing = [j for j in range(n_blocks) if not (path / f"c/{j}{tail}").is_file()]
            if missing:
                raise FileNotFoundError(f"{path} lacks the block files of rows {missing[0] * block_rows}.. "
                                        f"({len(missing)} of {n_blocks} blocks missing)")
            store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}},
                            open=True).result()
            sharding = getattr(target, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
            if len(sharding.device_set) == 1:
                # one block of rows at a time, written into the array's own memory (donated)
                array = jax.numpy.zeros(tuple(entry["shape"]), np.dtype(entry["dtype"]), device=sharding)
                for start, rows in _blocks(n_rows, block_rows):
                    array = _put_rows(array, store[start:start + rows].read().result(), np.int32(start))
                    array.block_until_ready()  # so that at most one host block is waiting
            else:  # a sharded target (resumed on a mesh): each device's rows read and placed on it
                shape = tuple(entry["shape"])
                shards = [jax.device_put(store[idx].read().result(), d)
                          for d, idx in sharding.addressable_devices_indices_map(shape).items()]
                array = jax.make_array_from_single_device_arrays(shape, sharding, shards)
            out[keys] = array
        return out


ocp.args.register_with_handler(_RowsHandler, for_save=True)(_RowsSave)
ocp.args.register_with_handler(_RowsHandler, for_restore=True)(_RowsRestore)


Keys = tuple[str, ...]


def _split(tree, take: Callable[[Keys, Any], bool], prefix: Keys = ()) -> tuple[Any, dict[Keys, Any]]:
    """``(tree without the leaves take(keys, leaf) picks, {keys: picked leaf})`` for a tree of nested dicts."""
    if isinstance(tree, dict):
        rest, picked = {}, {}
        for k, v in tree.items():
            keys = (*prefix, str(k))
            if not isinstance(v, dict) and take(keys, v):
                picked[keys] = v
                continue
            rest[k], more = _split(v, take, keys)
            picked.update(more)
        return rest, picked
    return tree, {}


def _merge(tree: dict, picked: dict[Keys, Any]) -> dict:
    """``tree`` with each ``picked[keys]`` put back at its path of keys (the inverse of :func:`_split`)."""
    tree = dict(tree)
    for (node, *rest), v in picked.items():
        tree[node] = _merge(tree.get(node, {}), {tuple(rest): v}) if rest else v
    return tree


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
        # orbax's in-flight bound is set to the blocks' scale: arrays it moves whole are at most ROW_BLOCK_BYTES
        # unless sharded (then each host moves its shards)
        self._mgr = ocp.CheckpointManager(self.directory, options=opts, item_handlers={
            "state": ocp.StandardCheckpointHandler(save_concurrent_gb=1, restore_concurrent_gb=1),
            "meta": ocp.JsonCheckpointHandler(), "rows": _RowsHandler()})

    def save(self, state, data_position: dict | None = None) -> int:
        """Save ``state`` under its step number and return the step (``data_position`` must be JSON)."""
        step = int(state.step)
        meta = {"step": step, "rng_impl": str(jax.random.key_impl(state.rng)), **(data_position or {})}
        small, big = _split(_to_saveable(state), lambda _, x: _by_rows(x))
        items = {"state": ocp.args.StandardSave(small), "meta": ocp.args.JsonSave(meta)}
        if big:
            items["rows"] = _RowsSave(big)
        self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
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
        metadata = self._mgr.item_metadata(step)
        stored = getattr(metadata["state"], "tree", metadata["state"])
        if stored is None:
            raise FileNotFoundError(f"{self.directory / str(step)} holds no readable train state")
        by_rows = metadata.get("rows") or {}  # steps with no array large enough have no rows item
        _check_fits({**_flat(stored), **{"/".join(k): v for k, v in by_rows.items()}}, _flat(abstract),
                    f"checkpoint step {step} in {self.directory}")
        small, big = _split(abstract, lambda path, _: path in by_rows)
        items = {"state": ocp.args.StandardRestore(small), "meta": ocp.args.JsonRestore()}
        if big:
            items["rows"] = _RowsRestore(big)
        out = self._mgr.restore(step, args=ocp.args.Composite(**items))
        return {"state": _merge(dict(out["state"]), dict(out["rows"]) if big else {}), "meta": out["meta"]}

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
