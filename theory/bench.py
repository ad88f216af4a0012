"""Speed of the thin Eq. 13 check at table scale, and the dense method's limit.

    python -m theory.bench [--n 1000000] [--d 16] [--k 128] [--batch 64] [--repeats 3] [--threads 1] [--json PATH]

Times ``spectral_update(method="thin")`` and the whole check (thin Eq. 13, Eq. 6, relative residual) on a freshly
initialized MLET field (``W1 ~ N(0, 0.25^2)``, ``W2 ~ U(+-1/sqrt(n))``) with a batch gradient of ``b`` queried
columns, and (``--dense-g``) with a dense ``G``. Reports the best of ``--repeats`` (the box is shared), its CPU time
(with ``--threads 1`` that is the wall time on an otherwise idle core) and the peak resident memory, against the
inputs' own size (``W2`` alone is ``8 k n`` bytes). Expected on the project's 2-core CPU:
thin check ~2-4 s at n = 10^6, d = 16, k = 128, residual ~1e-15; dense refuses n > 4096.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np

from theory.checks import random_case, rel
from theory.spectral import DENSE_MAX_N
from theory.updates import first_order_update, spectral_update


def best_time(fn, repeats: int):
    """Best wall time, all wall times, the result, and the CPU time (all threads) of the best run."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    best = int(np.argmin(times))
    return times[best], times, out, cpu[best]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m theory.bench", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10**6)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dense-g", action="store_true", help="also time a dense (all columns non-zero) G")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads (threadpoolctl); 1 is much faster when other jobs load the cores")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    if a.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=a.threads, user_api="blas")
    W1, W2, G, _ = random_case(a.d, a.k, a.n, seed=0, batch=a.batch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def check(g):
        return rel(spectral_update(W1, W2, g, method="thin"), first_order_update(W1, W2, g))

    t_thin, _, _, _ = best_time(lambda: spectral_update(W1, W2, G, method="thin"), a.repeats)
    t_check, times, residual, cpu = best_time(lambda: check(G), a.repeats)
    out = {"n": a.n, "d": a.d, "k": a.k, "batch": a.batch, "thin_update_s": t_thin, "thin_check_s": t_check,
           "thin_check_cpu_s": cpu, "thin_check_all_s": times, "residual": residual,
           "inputs_gib": (W1.nbytes + W2.nbytes + G.nbytes) / 2**30,
           "rss_before_gib": rss0, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "dense_max_n": DENSE_MAX_N, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "blas_threads": a.threads or "default", "load_avg_1min": os.getloadavg()[0]}
    if a.dense_g:
        Gd = np.random.default_rng(1).standard_normal(G.shape) / np.sqrt(G.size)
        out["dense_g_check_s"], _, out["dense_g_residual"], out["dense_g_cpu_s"] = best_time(lambda: check(Gd),
                                                                                           a.repeats)
    try:
        spectral_update(W1, W2, G, method="dense")
        out["dense_refused"] = False
    except ValueError as e:
        out["dense_refused"] = str(e)
    for key, v in out.items():
        print(f"{key}: {v}")
    if a.json:
        with open(f"{a.json}.tmp", "w") as fh:
            json.dump(out, fh, indent=1)
        os.replace(f"{a.json}.tmp", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
