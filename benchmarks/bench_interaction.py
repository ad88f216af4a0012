"""DLRM's dot interaction, forward and backward: the library's ``dot_interaction`` (hand-written VJP, one batched
product ``G T`` in the backward) against autodiff of the einsum and the upper-triangle gather (what it replaced,
still its ``custom_vjp=False`` form).

    .venv/bin/python -m benchmarks.bench_interaction --batches 1024 4096 --rounds 3

Both sides are jitted ``value_and_grad`` of ``sum(w * interaction(t))`` on the same ``[B, N, D]`` input (N = 27 is
DLRM on Criteo: 26 tables and the bottom MLP's output), alternated ``--rounds`` times in one process. Prints one
JSON line per batch size with the median fwd+bwd milliseconds of each side and their largest difference from a
numpy float64 reference (the values and the gradient).
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np

from mlet_jax.runtime import reexec_with_tuned_malloc


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--features", type=int, default=27, help="N: vectors per sample")
    p.add_argument("--dim", type=int, default=16, help="D")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="timed calls per side and round")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    reexec_with_tuned_malloc()
    import jax
    import jax.numpy as jnp

    from mlet_jax.models.layers import dot_interaction

    n, d = args.features, args.dim
    iu, ju = np.triu_indices(n, k=1)
    for b in args.batches:
        rng = np.random.default_rng(args.seed)
        x64 = rng.standard_normal((b, n, d))
        w64 = rng.standard_normal((b, iu.size))
        want_v = np.einsum("bnd,bmd->bnm", x64, x64)[:, iu, ju]
        want_g = np.zeros_like(x64)                            # d/dt_i sum_p w_p <t_a(p), t_b(p)>
        np.add.at(want_g, (slice(None), iu), w64[:, :, None] * x64[:, ju])
        np.add.at(want_g, (slice(None), ju), w64[:, :, None] * x64[:, iu])
        x, w = jnp.asarray(x64, jnp.float32), jnp.asarray(w64, jnp.float32)
        sides = {"library": dot_interaction, "autodiff": functools.partial(dot_interaction, custom_vjp=False)}
        fns, err = {}, {}
        for name, f in sides.items():
            fns[name] = jax.jit(lambda t, w, f=f: jax.value_and_grad(lambda t: jnp.sum(f(t) * w))(t))
            g = fns[name](x, w)[1]
            err[name] = {"value": float(np.abs(np.asarray(f(x)) - want_v).max()),
                         "grad": float(np.abs(np.asarray(g) - want_g).max())}
            for _ in range(3):
                jax.block_until_ready(fns[name](x, w))
        times = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name in sides:
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    jax.block_until_ready(fns[name](x, w))
                    times[name].append(time.perf_counter() - t0)
        ms = {name: 1e3 * float(np.median(ts)) for name, ts in times.items()}
        print(json.dumps({"batch": b, "features": n, "dim": d, "fwd_bwd_ms": ms,
                          "speedup": ms["autodiff"] / ms["library"], "max_abs_err_vs_float64": err}))


if __name__ == "__main__":
    main()
