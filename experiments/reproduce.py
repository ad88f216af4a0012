"""Every experiment in one command: sweep, figures, savings, frequency, init std, compression, controls, report.

    python -m experiments.reproduce --quick --out experiments/results/quick      # synthetic, small: ~10 min
    python -m experiments.reproduce --dataset avazu --data-dir DATA --out results/avazu   # the paper's grid

Expected runtime: quick plan about 45 training runs (DLRM with SGD lr 0.2 and DCN with Adagrad lr 0.02, 100k
synthetic training rows, one epoch), ~10 minutes on a quiet 2-core CPU (``timing.json`` records the measured time
per experiment), plus tuned against tuned (experiments/tuned.py: 3 search programs and 15 runs on 40k rows, 345 s
measured at load 17) and the isotropic twin (experiments/twin.py, 92 s), which later runs of the same plan reuse.
The paper's grid (Table 2: 7 models, DLRM SGD lr 0.2, others Adagrad lr 0.02, one epoch, 5 seeds for DLRM and 3 for
the others) takes days on a CPU; run it sharded (``--shard I/N`` in N processes on one ``--out``,
then once more without ``--shard`` to write the tables). Expected result: ``OUT/report.md`` with every table and
figure and a computed verdict per paper claim. All runs are rows of ``OUT/runs.jsonl``; a re-run resumes.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

from experiments import (
    compression,
    controls,
    figures,
    figures_more,
    frequency,
    init_variance,
    report,
    savings,
    sweep,
    tuned,
    twin,
)
from experiments.common import parse_plan_cli
from mlet_jax.io import atomic_write_text

# compression first: its unhashed runs are sweep runs too
STEPS = ("compression", "sweep", "figures", "savings", "frequency", "init_variance", "controls", "tuned", "twin",
         "figures_more")
MODULES = {"compression": compression, "sweep": sweep, "figures": figures, "savings": savings,
           "frequency": frequency, "init_variance": init_variance, "controls": controls, "tuned": tuned, "twin": twin,
           "figures_more": figures_more}


def run(plan, out: str, *, shard=(0, 1), train: bool = True, log=print) -> dict:
    """Run every step in order, then the report; returns the timings."""
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "plan.json"), json.dumps(plan.to_json(), indent=1, default=str))
    timing, t_all = {}, time.perf_counter()
    for step in STEPS:
        t0 = time.perf_counter()
        log(f"== {step}")
        MODULES[step].run(plan, out, shard=shard, train=train, log=log)
        timing[step] = round(time.perf_counter() - t0, 1)
    timing["total_s"] = round(time.perf_counter() - t_all, 1)
    timing["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "load_avg_at_end": os.getloadavg()}
    if train and shard == (0, 1):
        atomic_write_text(os.path.join(out, "timing.json"), json.dumps(timing, indent=1))
    report.build(out)
    return timing


def main(argv=None):
    a, plan, kw = parse_plan_cli(__doc__, argv)
    t = run(plan, a.out, **kw)
    print(json.dumps(t))


if __name__ == "__main__":
    main(sys.argv[1:])
