"""``python -m theory``: verify the MLET update theorem numerically and print one table.

    python -m theory [--n 2000] [--d 16] [--k 64] [--seed 0] [--batch 8] [--json report.json] [--no-dlrm]

Rows: claim, measured value, tolerance, PASS/FAIL (checks 1-6 of :mod:`theory.checks`, plus the optimizer checks),
then one summary line per optimizer (SGD, torch Adagrad, an optax transformation). Exits 1 if any check fails.
Runtime with the defaults: 24 s of CPU (68 s wall on the 2-core box at load average ~12), a third of it the DLRM
check's JAX compilation; expected result: every row PASS, exit status 0.

References:
    Deng et al., MLET, arXiv:2309.15881, Section 2 and Appendix A.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from theory import checks


def run(n: int, d: int, k: int, seed: int, batch: int, dlrm: bool = True) -> tuple[list[checks.Check], list[dict]]:
    """All checks and optimizer summaries for a random case of size ``(n, d, k)`` (and the DLRM check)."""
    rows = checks.run_random(n=n, d=d, k=k, seed=seed, batch=batch)
    W1, W2, G, _ = checks.random_case(d, k, n, seed, batch)
    rows += checks.check_enhancement(W1, W2, G, label=f" (d={d}, k={k}, n={n})")
    if dlrm:
        try:
            rows += checks.check_dlrm(seed)
        except ImportError as e:  # mlet_jax is this project's own library: its absence is a failure
            rows.append(checks.Check("DLRM real-gradient checks (check 6)", float("nan"), "runs", False,
                                     {"error": repr(e)}))
    return rows, checks.optimizer_summaries(W1, W2, G)


def _fmt(m) -> str:
    if isinstance(m, int) or (isinstance(m, float) and m.is_integer() and abs(m) < 1e15):
        return f"{int(m):>12}"
    if isinstance(m, float) and m == m and 1e-3 <= abs(m) < 1e4:
        return f"{m:12.8f}"
    return f"{m:12.3e}"


def format_table(rows: list[checks.Check]) -> str:
    width = min(max(len(r.claim) for r in rows), 110)
    lines = [f"{'claim':<{width}}  {'measured':>12}  {'tolerance':<24}  result", "-" * (width + 50)]
    for r in rows:
        claim = r.claim if len(r.claim) <= width else r.claim[: width - 3] + "..."
        value = _fmt(r.measured)
        lines.append(f"{claim:<{width}}  {value}  {r.tolerance:<24}  {'PASS' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m theory", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="columns (ids) of the random table")
    p.add_argument("--d", type=int, default=16, help="embedding dimension d")
    p.add_argument("--k", type=int, default=64, help="MLET inner dimension k (k < d, = d and > d are all run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="queried columns b of the random gradient")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--no-dlrm", action="store_true", help="skip check 6 (real DLRM gradients)")
    a = p.parse_args(argv)
    for name in ("n", "d", "k", "batch"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    t0 = time.perf_counter()
    rows, summaries = run(a.n, a.d, a.k, a.seed, a.batch, dlrm=not a.no_dlrm)
    seconds = time.perf_counter() - t0
    failed = [r for r in rows if not r.passed]
    print(format_table(rows))
    print()
    for s in summaries:
        print(s["text"])
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed in {seconds:.1f} s (n={a.n}, d={a.d}, k={a.k}, "
          f"seed={a.seed})")
    if a.json:
        report = {"args": vars(a), "seconds": seconds, "passed": not failed,
                  "checks": [r.as_dict() for r in rows], "optimizers": summaries}
        tmp = f"{a.json}.tmp"
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=1, default=float)
        os.replace(tmp, a.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
