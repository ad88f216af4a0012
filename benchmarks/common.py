"""What every benchmark shares: the timing loop, the record of the machine a number was measured on, and the
external paths (the peer bench, its data, DeepCTR-Torch's interpreter) that only a command line or the environment
can name.

Timing: :func:`timed` runs a call and blocks until everything it returned is computed (JAX dispatches
asynchronously, so a clock read without the block measures the dispatch); :func:`best_of` is the fastest of a few
such calls after a warm-up one; :func:`round_robin` times one call per key per round, so load drift on a shared
machine hits every key alike and ratios between keys stay meaningful.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# JAX is imported inside the timing and machine helpers, so that a benchmark's --help and usage errors come before
# JAX starts, and parity_deepctr's torch side (which runs under DeepCTR-Torch's interpreter) can use this module.

REPO = Path(__file__).resolve().parents[1]

# The external paths, each an option of the scripts that need it with the environment variable as its default.
PEER_BENCH_ENV = "MLET_PEER_BENCH"        # folder of bench_deepctr.py, bench_ceilings.py, gen_data.py
PEER_DATA_ENV = "MLET_PEER_DATA"          # PREFIX of gen_data.py's PREFIX_train.npz / PREFIX_test.npz
DEEPCTR_PYTHON_ENV = "MLET_DEEPCTR_PYTHON"  # the python of a venv with DeepCTR-Torch 0.3.0 and torch


def timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``, the clock stopped once every array of the result is ready."""
    import jax

    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def best_of(fn: Callable, *args, reps: int) -> float:
    """The fastest of ``reps`` timed calls of ``fn(*args)``, after one untimed call (compilation, warm caches)."""
    timed(fn, *args)
    return min(timed(fn, *args)[1] for _ in range(reps))


def step_gflop(trainer, state, batch) -> float:
    """GFLOP of one train step of ``trainer`` on ``batch``, by XLA's cost analysis of the compiled step.

    XLA counts a loop's body once, so a step that runs its samples in chunks (``TrainConfig.chunk_samples``, a
    ``lax.scan``) would report one chunk's FLOPs; the count is taken from the one-pass twin of the step instead
    (the same math, so the same FLOPs). A ``lax.cond`` counts as its costlier branch.
    """
    import dataclasses

    if trainer.chunk_samples and trainer.chunk_samples < int(np.shape(batch["ids"])[0]):
        trainer = dataclasses.replace(trainer, config=dataclasses.replace(trainer.config, chunk_samples=0))
    cost = trainer.train_step.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan")


def body_step(trainer, state, batch) -> tuple[Callable, tuple]:
    """``(fn, args)``: the model body alone of ``trainer``'s train step on ``batch``, jitted; ``fn(*args)`` returns
    ``(loss, g_rest, g_features)``: forward and backward of everything after the embedding stage (interaction, MLPs,
    heads, loss), the gradient with respect to the features included, in the step's chunks of samples
    (:func:`mlet_jax.row_sparse.body_value_and_grad`), on the features of ``state``'s tables."""
    import jax
    import jax.numpy as jnp

    from mlet_jax import row_sparse

    batch = {k: jnp.asarray(v) for k, v in trainer.check_batch(dict(batch)).items()}
    n_b = int(batch["ids"].shape[0])
    features = trainer.model.apply({"params": state.params}, batch["dense"], batch["ids"],
                                   method=lambda m, d, i: m.tables(d, i))
    _, rest = row_sparse.split_tables(state.params, trainer.table_paths)
    fn = jax.jit(lambda rest, features, batch: row_sparse.body_value_and_grad(
        trainer.model, trainer._loss_fn(n_b), rest, features, batch, trainer.chunk_samples, train=True))
    return fn, (rest, features, batch)


def body_seconds(trainer, state, batch, reps: int = 20) -> float:
    """Seconds of the model body alone (:func:`body_step`) on ``batch``: the fastest of ``reps`` timed calls after a
    warm-up one.

    A train step adds the embedding stage (dedup, compaction, gather, MLET projection, the occurrences' lookup and
    its gradient) and every optimizer update to this, so a step time below it cannot be reached without a faster
    body: the floor of the step's dense part as this machine's XLA runs it (against the FLOP floor of
    :func:`step_gflop`, which assumes every matmul at the large-matmul rate).
    """
    fn, args = body_step(trainer, state, batch)
    return best_of(fn, *args, reps=reps)


def round_robin(steps: dict[Hashable, Callable], states: dict, batch_at: Callable[[int], Any],
                rounds: int) -> dict[Hashable, list[float]]:
    """Seconds of ``rounds`` train steps per key, one step of every key per round (in ``steps``' order).

    ``steps[key](state, batch) -> (state, metrics)`` is called on ``states[key]`` (updated in place: steps donate
    their state) and ``batch_at(round)``.
    """
    times: dict = {k: [] for k in steps}
    for i in range(rounds):
        for k, step in steps.items():
            (states[k], _), dt = timed(step, states[k], batch_at(i))
            times[k].append(dt)
    return times


@functools.cache
def _static_machine() -> dict:
    import jax

    dev = jax.devices()[0]
    return {"host": platform.node(), "os": platform.platform(), "arch": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "jax": jax.__version__,
            "device": f"{dev.platform}:{dev.device_kind} x{jax.device_count()}", "commit": commit()}


def machine() -> dict:
    """Where and when a number was measured: host, OS, CPUs, JAX and its devices, the commit, the load average."""
    from mlet_jax.runtime import malloc_tuned  # not at the top: the torch side runs this module without mlet_jax

    return {**_static_machine(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "malloc_tuned": malloc_tuned()}


def describe(m: dict) -> str:
    """One line of :func:`machine`'s record, for printed headers."""
    load = ", ".join(f"{x:.1f}" for x in m["load_avg"])
    return (f"{m['device']} on {m['host']} ({m['arch']}, {m['cpus']} CPUs, load {load}), jax {m['jax']}, "
            f"python {m['python']}, commit {m['commit']}")


def commit(folder: Path = REPO) -> str | None:
    """The short commit of ``folder``'s checkout, ``+dirty`` when tracked files differ from it; None outside git."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=folder, capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def write_jsonl(path: str, rows: list[dict]) -> None:
    """``rows`` as JSON lines at ``path``, written atomically (never half a file)."""
    from mlet_jax.io import atomic_write_text  # here, so the torch side of parity_deepctr can import this module

    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def add_external_path(p: argparse.ArgumentParser, option: str, env: str, help: str) -> None:
    """``option``, defaulting to ``$env``; :func:`require_path` checks it once the run knows it needs it."""
    p.add_argument(option, default=os.environ.get(env), help=f"{help} (default: ${env})")


def require_path(p: argparse.ArgumentParser, value: str | None, option: str, env: str, *,
                 files: Sequence[str] = ("",)) -> str:
    """``value`` when every ``value + suffix`` in ``files`` exists; otherwise a usage error naming ``option``.

    ``files=("",)`` checks ``value`` itself (a file or folder); ``("_train.npz",)`` a prefix; ``("/x.py",)`` a file in
    a folder.
    """
    if not value:
        p.error(f"argument {option}: required here; give {option} PATH or set {env}")
    missing = [value + s for s in files if not os.path.exists(value + s)]
    if missing:
        p.error(f"argument {option}: {', '.join(missing)} not found")
    return value
