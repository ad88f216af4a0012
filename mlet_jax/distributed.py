"""Many devices: a ``(data, model)`` device mesh, the batch split over ``data``, table rows split over all devices.

Layout (``jax.sharding``, GSPMD: the train step is the same pure function, only its inputs carry shardings):

* the batch is split along its first axis over the ``data`` mesh axis;
* every parameter named ``table`` (and its row-sparse Adagrad accumulator, and the dense optimizer's statistics for
  it) is split by rows over *both* mesh axes, so each of the ``D`` devices holds ``n / D`` rows and no device ever
  holds a whole table;
* everything else (MLPs, MLET projections, step counters, the RNG key) is replicated.

The row-sparse step then gathers the batch's unique rows from the row shards (each device reads the rows it owns and
the results are combined) and scatter-adds the updates back into the shards that own them; tests check that the
compiled step never materializes a full ``[n, width]`` table on a device.

Single host::

    mesh = make_mesh()                                  # all local devices on the data axis
    step, state = shard_train_step(trainer, mesh, trainer.init(0, batch))
    for batch in batches(...):
        state, metrics = step(state, shard_batch(batch, mesh))

Multi-host (one process per host, each seeing its local accelerators)::

    import jax
    jax.distributed.initialize()  # on a cluster manager (SLURM, TPU pods, GKE) arguments are discovered; elsewhere
                                  # pass coordinator_address="host0:1234", num_processes=H, process_id=h
    mesh = make_mesh()            # now spans jax.devices(): every device of every host
    state = trainer.init(0, batch)                      # same seed on every host: identical replicated values
    step, state = shard_train_step(trainer, mesh, state)
    for local_batch in batches(split_for_this_host, batch_size // jax.process_count(), seed=seed + h, ...):
        state, metrics = step(state, shard_batch(local_batch, mesh))  # each host feeds its slice of the batch

Every host must run the same program (same model, config and number of steps). ``shard_batch`` assembles the global
batch from each process's local rows with ``jax.make_array_from_process_local_data``. Checkpoints of a sharded
state are written and read shard by shard by orbax (:mod:`mlet_jax.checkpoint`, restore into a sharded target).

References:
    JAX, "Distributed arrays and automatic parallelization" and "Multi-process" guides (jax.readthedocs.io).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"
ROWS = (DATA, MODEL)  # table rows are split over every device of the mesh


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: ``jax.devices()``, all hosts).

    Args:
        data: size of the data axis (default: the devices not used by ``model``).
        model: size of the model axis. Tables are split over both axes either way; a model axis > 1 only matters
            for layouts that split other parameters.
        devices: the devices to use, in mesh order.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data is None:
        data = len(devices) // model
    if data * model != len(devices) or data < 1 or model < 1:
        raise ValueError(f"a mesh of data={data} x model={model} needs {data * model} devices, got {len(devices)}")
    return Mesh(np.asarray(devices, dtype=object).reshape(data, model), (DATA, MODEL))


def _is_table_leaf(path) -> bool:
    keys = [getattr(p, "key", getattr(p, "name", None)) for p in path]
    # Parameters named "table", the row-sparse state's "embeddings/table" entries, and optax states mirroring them.
    return any(k == "table" or (isinstance(k, str) and k.endswith("/table")) for k in keys)


def state_shardings(state, mesh: Mesh) -> Any:
    """``NamedSharding`` per leaf of a train state: table-shaped leaves by rows over all devices, others replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    rows = NamedSharding(mesh, PartitionSpec(ROWS))

    def leaf(path, x):
        return rows if _is_table_leaf(path) and np.ndim(x) >= 1 else replicated

    return jax.tree_util.tree_map_with_path(leaf, state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The batch's first axis split over ``data``."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def shard_state(state, mesh: Mesh):
    """Place a train state on the mesh (tables split by rows; each device receives only its rows)."""
    return jax.device_put(state, state_shardings(state, mesh))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Split a batch over the data axis.

    On one process ``batch`` is the global batch; with several processes it is this process's slice, and the
    global batch is the concatenation over processes (``jax.make_array_from_process_local_data``).
    """
    sh = batch_sharding(mesh)
    if jax.process_count() == 1:
        n = mesh.shape[DATA]
        for k, v in batch.items():
            if np.shape(v)[0] % n:
                raise ValueError(f"batch[{k!r}] has {np.shape(v)[0]} rows, not divisible by the data axis ({n})")
        return jax.device_put(batch, sh)
    return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in batch.items()}


def shard_train_step(trainer, mesh: Mesh, state):
    """``(step, sharded_state)``: the trainer's step jitted with explicit shardings, and the state placed to match.

    Input and output state shardings are the same, so the donated state is updated in place shard by shard.
    """
    st_sh = state_shardings(state, mesh)
    step = jax.jit(trainer._train_step, in_shardings=(st_sh, batch_sharding(mesh)),
                   out_shardings=(st_sh, NamedSharding(mesh, PartitionSpec())), donate_argnums=(0,))
    return step, jax.device_put(state, st_sh)


def full_shape_ops(compiled_text: str, shape: Sequence[int]) -> list[str]:
    """Lines of a compiled (per-device) HLO module that produce an array of exactly ``shape``.

    After SPMD partitioning, shapes in the compiled module are per device, so a ``[n, width]`` table that is split
    by rows must never appear there: any hit means some device materializes the whole table.
    """
    dims = ",".join(str(int(d)) for d in shape)
    return [ln.strip() for ln in compiled_text.splitlines() if f"[{dims}]" in ln and "=" in ln]
