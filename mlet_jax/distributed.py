"""Many devices and hosts: a ``(data, model)`` mesh, the batch split over ``data``, table rows over all devices.

Layout (``jax.sharding``, GSPMD: the train step is the same pure function, only its inputs and outputs carry
shardings; :class:`mlet_jax.training.Trainer` chooses them from the train state's structure):

* the batch is split along its first axis over the ``data`` mesh axis;
* the embedding stage's tables, their row-sparse optimizer state and the dedup scratch are split by rows over
  *both* mesh axes, so each of the ``D`` devices holds ``n / D`` rows and no device ever holds a whole table (tables
  are padded to a multiple of ``D`` rows; padding rows are never indexed);
* everything else (MLPs, MLET projections, step counters, the RNG key) is replicated.

The row-sparse step gathers the batch's rows from the row shards and scatter-adds the updates back into the shards
that own them; tests check that the compiled step never materializes a full ``[n, width]`` table on a device.

One host::

    trainer = Trainer(model, config, mesh=make_mesh())      # all local devices on the data axis
    state, history = fit(trainer, train, batch_size=1024)   # or fit(Trainer(model, config), ..., mesh=mesh)

Several hosts (one process each; the command line does the same with ``--coordinator-address``,
``--num-processes`` and ``--process-id``)::

    initialize("host0:1234", num_processes=2, process_id=h)  # before any other JAX call
    trainer = Trainer(model, config, mesh=make_mesh())       # now spans every device of every process
    state, history = fit(trainer, train, batch_size=1024)    # each process reads only its rows of each batch

Every process runs the same program (same model, config, data and seed). :func:`process_rows` says which rows of a
global batch this process feeds; :func:`shard_batch` assembles the global batch from each process's rows with
``jax.make_array_from_process_local_data``. Checkpoints of a sharded state are written and read shard by shard by
orbax (:mod:`mlet_jax.checkpoint`, restore into a sharded target).

References:
    JAX, "Distributed arrays and automatic parallelization" and "Multi-process" guides (jax.readthedocs.io).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"
ROWS = (DATA, MODEL)  # table rows are split over every device of the mesh


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: ``jax.devices()``, all processes).

    Args:
        data: size of the data axis (default: the devices not used by ``model``).
        model: size of the model axis. Tables are split over both axes either way; a model axis > 1 only matters
            for layouts that split other parameters.
        devices: the devices to use, in mesh order (processes in order, so each process's devices hold a
            contiguous part of the batch).
    """
    devices = list(jax.devices() if devices is None else devices)
    if data is None:
        data = len(devices) // model
    if data * model != len(devices) or data < 1 or model < 1:
        raise ValueError(f"a mesh of data={data} x model={model} needs {data * model} devices, got {len(devices)}")
    return Mesh(np.asarray(devices, dtype=object).reshape(data, model), (DATA, MODEL))


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=8"`` or ``"data=4,model=2"`` -> ``{"data": 8, "model": 1}`` (the command line's ``--mesh``)."""
    out = {DATA: None, MODEL: 1}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in out or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--mesh takes axis=size pairs over 'data' and 'model' with sizes >= 1, "
                             f"for example data=8 or data=4,model=2; got {text!r}")
        out[name] = int(value)
    return out


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def rows_sharding(mesh: Mesh) -> NamedSharding:
    """First axis split over every device of the mesh (tables and their row statistics)."""
    return NamedSharding(mesh, PartitionSpec(ROWS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The batch's first axis split over ``data``."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def process_rows(global_batch: int) -> tuple[int, int]:
    """``(lo, hi)``: the rows of a global batch that this process feeds (all of them with one process)."""
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"a batch of {global_batch} rows does not split over {n} processes")
    per = global_batch // n
    return jax.process_index() * per, (jax.process_index() + 1) * per


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Split a batch over the data axis.

    On one process ``batch`` is the global batch; with several processes it is this process's rows
    (:func:`process_rows`), and the global batch is their concatenation over processes.
    """
    sh = batch_sharding(mesh)
    n_local = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
    per_device = mesh.shape[DATA] // (mesh.size // n_local) if jax.process_count() > 1 else mesh.shape[DATA]
    for k, v in batch.items():
        if np.shape(v)[0] % max(per_device, 1):
            raise ValueError(f"batch[{k!r}] has {np.shape(v)[0]} rows, not divisible by the data axis "
                             f"({mesh.shape[DATA]} over {jax.process_count()} process(es))")
    if jax.process_count() == 1:
        return jax.device_put(batch, sh)
    return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in batch.items()}


def local_value(x: jax.Array) -> np.ndarray:
    """The value of a replicated array on this process (works when other processes hold copies too)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(x.addressable_data(0))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` (arguments, or JAX's own environment discovery when all are ``None``).

    On CPU the processes talk through gloo (JAX's CPU collectives). Call it before any other JAX call.
    """
    if _cpu_only():  # never ask JAX for its backend here: that would start it before initialize
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def _cpu_only() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "") or os.environ.get("JAX_PLATFORM_NAME", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    try:  # an accelerator plugin installed means JAX will pick it; otherwise the CPU
        import importlib.util

        return not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))
    except (ImportError, ValueError):
        return True


def full_shape_ops(compiled_text: str, shape: Sequence[int]) -> list[str]:
    """Lines of a compiled (per-device) HLO module that produce an array of exactly ``shape``.

    After SPMD partitioning, shapes in the compiled module are per device, so a ``[n, width]`` table that is split
    by rows must never appear there: any hit means some device materializes the whole table.
    """
    dims = ",".join(str(int(d)) for d in shape)
    return [ln.strip() for ln in compiled_text.splitlines() if f"[{dims}]" in ln and "=" in ln]
