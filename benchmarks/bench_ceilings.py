"""This machine's ceilings that a CTR train step runs into, measured from mlet_jax's venv (numpy and JAX).

* fp32 matmul GFLOP/s: numpy (its BLAS) and ``jnp.dot`` under ``jax.jit`` (XLA CPU), at 2048^3 and at the DLRM
  MLPs' largest layer (``[B, 512] x [512, 256]``);
* the DLRM MLPs alone (bottom 13-512-256-128-16, top 367-512-256-1, ReLU, one SGD step: forward, backward and
  update) at batch B, in milliseconds: what XLA CPU makes of the dense part of a DLRM step;
* copy GB/s (read + write) of a float32 array, numpy and JAX;
* random rows/s: rows of a ``840,543 x 16`` float32 table gathered at uniform random indices, numpy ``take`` and a
  jitted JAX gather.

Every figure is the best of ``--repeats`` after a warm-up (the machine is shared: the fastest run is the one least
disturbed). ``--xla-flags-sweep`` times the matmuls and the MLP step again in child processes, one per
``XLA_FLAGS`` setting of :data:`SWEEP` (a flag this jax does not know makes its child fail: reported, not fatal).

Command (BENCHMARKS.md; ``benchmarks.bench_torchrec`` calls :func:`measure` in its own run)::

    .venv/bin/python -m benchmarks.bench_ceilings --xla-flags-sweep
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# XLA CPU settings tried against the default (issue 19 item 3). Each runs in a fresh process.
SWEEP = {
    "default": "",
    "no_multi_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
    "no_thunk_runtime": "--xla_cpu_use_thunk_runtime=false",
    "onednn": "--xla_cpu_use_onednn=true",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "no_fusion_emitters": "--xla_cpu_use_fusion_emitters=false",
}

PEER_ROWS = 840_543


def _best(fn, repeats: int) -> float:
    """Fastest seconds of ``repeats`` calls of ``fn`` (which blocks until done), after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def mlp_params(key, dim: int = 16, num_dense: int = 13, n_fields: int = 26):
    """The DLRM MLPs' weights (bottom num_dense-512-256-128-dim, top (dim + pairs)-512-256-1)."""
    import jax

    n_vec = n_fields + 1
    top_in = dim + n_vec * (n_vec - 1) // 2
    sizes = [(num_dense, 512), (512, 256), (256, 128), (128, dim), (top_in, 512), (512, 256), (256, 1)]
    keys = jax.random.split(key, len(sizes))
    return [(jax.random.normal(k, s) * (2.0 / sum(s)) ** 0.5, jax.numpy.zeros(s[1]))
            for k, s in zip(keys, sizes, strict=True)]


def mlp_step(params, dense, inter, label):
    """One SGD (lr 0.2) step of the DLRM MLPs alone: bottom on ``dense``, top on ``[bottom, inter]``."""
    import jax
    import jax.numpy as jnp

    def loss(ps):
        x = dense
        for w, b in ps[:4]:
            x = jax.nn.relu(x @ w + b[None, :])
        h = jnp.concatenate([x, inter], axis=1)
        for i, (w, b) in enumerate(ps[4:]):
            h = h @ w + b[None, :]
            if i < 2:
                h = jax.nn.relu(h)
        return jnp.mean(jax.nn.softplus(h[:, 0]) - label * h[:, 0])

    g = jax.grad(loss)(params)
    return jax.tree_util.tree_map(lambda p, d: p - 0.2 * d, params, g)


def numpy_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 ``n^3`` matmul GFLOP/s of numpy (its BLAS), best of ``repeats``."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    return 2.0 * n**3 / _best(lambda: np.matmul(a, b, out=c), repeats) / 1e9


def jax_matmul_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """fp32 ``[m, k] x [k, n]`` GFLOP/s of ``jnp.dot`` under ``jax.jit`` (XLA CPU), best of ``repeats``."""
    import jax
    import jax.numpy as jnp

    dot = jax.jit(jnp.dot)
    x = jax.random.normal(jax.random.key(0), (m, k))
    w = jax.random.normal(jax.random.key(1), (k, n))
    return 2.0 * m * k * n / _best(lambda: dot(x, w).block_until_ready(), repeats) / 1e9


def matmul_gflops(repeats: int = 5, n: int = 2048) -> dict:
    """fp32 ``n^3`` matmul GFLOP/s of numpy and of ``jnp.dot``: the fastest a dense layer can run here;
    ``matmul_gflops`` is the better of the two."""
    out = {f"numpy_matmul_{n}_gflops": numpy_matmul_gflops(n, repeats),
           f"jax_matmul_{n}_gflops": jax_matmul_gflops(n, n, n, repeats)}
    out["matmul_gflops"] = max(out.values())
    return out


def measure_jax(batch: int = 4096, repeats: int = 5) -> dict:
    """JAX's matmul GFLOP/s (2048^3 and [batch, 512] x [512, 256]) and the MLP step's ms at ``batch``."""
    import jax
    import jax.numpy as jnp

    out = {f"jax_matmul_{name}_gflops": jax_matmul_gflops(m, k, n, repeats)
           for name, (m, k, n) in {"2048": (2048, 2048, 2048), "mlp": (batch, 512, 256)}.items()}
    params = mlp_params(jax.random.key(2))
    dense = jax.random.uniform(jax.random.key(3), (batch, 13))
    inter = jax.random.normal(jax.random.key(4), (batch, 351))
    label = (jax.random.uniform(jax.random.key(5), (batch,)) < 0.25).astype(jnp.float32)
    step = jax.jit(mlp_step)
    compiled = step.lower(params, dense, inter, label).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    sec = _best(lambda: jax.block_until_ready(step(params, dense, inter, label)), repeats)
    out["jax_mlp_step_ms"] = 1e3 * sec
    out["mlp_step_gflop"] = float(cost.get("flops", float("nan"))) / 1e9
    out["jax_mlp_step_gflops"] = out["mlp_step_gflop"] / sec
    return out


def jax_random_rows(table, idx, repeats: int = 5) -> dict:
    """JAX's random-row rates (M rows/s) at the row indices ``idx`` of the numpy ``table``: a gather
    (``jax_random_Mrows_per_s``) and an in-place scatter-add (``jax_random_scatter_add_Mrows_per_s``), best of
    ``repeats``."""
    import jax
    import jax.numpy as jnp

    jt, ji = jnp.asarray(table), jnp.asarray(idx)
    gather = jax.jit(lambda t, i: t.at[i].get(mode="promise_in_bounds"))
    out = {"jax_random_Mrows_per_s": len(idx) / _best(lambda: gather(jt, ji).block_until_ready(), repeats) / 1e6}
    scatter = jax.jit(lambda t, i, g: t.at[i].add(g), donate_argnums=0)
    g = jnp.ones((len(idx), table.shape[1]), jnp.float32) * 1e-6
    state = {"t": jt}

    def scatter_once():
        state["t"] = scatter(state["t"], ji, g)
        state["t"].block_until_ready()

    out["jax_random_scatter_add_Mrows_per_s"] = len(idx) / _best(scatter_once, repeats) / 1e6
    return out


def measure(batch: int = 4096, repeats: int = 5, copy_mib: int = 256, gather_n: int = 1_000_000,
            rows: int = PEER_ROWS, dim: int = 16) -> dict:
    """Every ceiling of the module docstring, as one flat dict (best of ``repeats``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    for name, value in {"batch": batch, "repeats": repeats, "copy_mib": copy_mib, "gather_n": gather_n,
                        "rows": rows, "dim": dim}.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    rng = np.random.default_rng(0)
    out = {"numpy_matmul_2048_gflops": numpy_matmul_gflops(2048, repeats)}
    out.update(measure_jax(batch, repeats))

    src = np.ones(copy_mib << 18, np.float32)
    dst = np.zeros_like(src)
    out["numpy_copy_GBps"] = 2 * src.nbytes / _best(lambda: np.copyto(dst, src), repeats) / 1e9
    jcopy = jax.jit(lambda x: x * 1.0 + 1e-30, donate_argnums=0)  # one read and one write pass, in place
    held = {"x": jnp.asarray(src)}

    def copy_once():
        held["x"] = jcopy(held["x"])
        held["x"].block_until_ready()

    out["jax_copy_GBps"] = 2 * src.nbytes / _best(copy_once, repeats) / 1e9

    table = rng.standard_normal((rows, dim), dtype=np.float32)
    idx = rng.integers(0, rows, gather_n).astype(np.int32)
    buf = np.empty((gather_n, dim), np.float32)
    out["numpy_random_Mrows_per_s"] = gather_n / _best(lambda: np.take(table, idx, axis=0, out=buf), repeats) / 1e6
    out.update(jax_random_rows(table, idx, repeats))
    out["config"] = {"batch": batch, "repeats": repeats, "copy_mib": copy_mib, "gather_n": gather_n,
                     "table": [rows, dim], "jax": jax.__version__, "numpy": np.__version__,
                     "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    return out


def sweep(batch: int, repeats: int, rounds: int = 2, names=tuple(SWEEP)) -> dict:
    """:func:`measure_jax` under every :data:`SWEEP` setting, each in a fresh process, ``rounds`` times alternating
    (best per setting); a setting whose process fails gets its error's last line."""
    res: dict = {}
    for _ in range(rounds):
        for name in names:
            flags = SWEEP[name]
            env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()}
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_ceilings", "--jax-only", "--batch",
                                   str(batch), "--repeats", str(repeats)], env=env, capture_output=True, text=True,
                                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=False)
            if proc.returncode:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                res[name] = {"flags": flags, "error": tail[:300]}
                continue
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            prev = res.get(name, {})
            res[name] = {"flags": flags, **{k: (max(v, prev.get(k, v)) if k.endswith("gflops") else
                                               min(v, prev.get(k, v))) for k, v in rec.items()}}
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4096, help="batch of the MLP-shaped matmul and the MLP step")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--xla-flags-sweep", action="store_true", help="also time JAX under each XLA_FLAGS of SWEEP")
    p.add_argument("--sweep", nargs="+", default=list(SWEEP), choices=list(SWEEP), help="settings the sweep runs")
    p.add_argument("--rounds", type=int, default=2, help="sweep rounds (the settings alternate; best per setting)")
    p.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)  # the sweep's children
    p.add_argument("--out", default=None, help="JSON output path")
    a = p.parse_args(argv)
    for opt in ("batch", "repeats", "rounds"):
        if getattr(a, opt) < 1:
            p.error(f"argument --{opt}: must be >= 1")
    if a.out:
        from mlet_jax.io import check_output_file

        try:
            check_output_file(a.out, "--out")
        except (ValueError, OSError) as e:
            p.error(f"argument --out: {e}")
    if a.jax_only:
        rec = measure_jax(a.batch, a.repeats)
        print(json.dumps(rec))
        return rec
    from benchmarks.common import machine

    rec = {"ceilings": measure(a.batch, a.repeats), "machine": machine()}
    if a.xla_flags_sweep:
        rec["xla_flags_sweep"] = sweep(a.batch, a.repeats, a.rounds, a.sweep)
    print(json.dumps(rec, indent=1))
    if a.out:
        from mlet_jax.io import write_json_output

        write_json_output(a.out, rec, "mlet_jax.bench_ceilings/1", "--out")
    return rec


if __name__ == "__main__":
    main()
