"""Step time of the current engine against an older commit: ``benchmarks.bench_models`` run on both, alternately.

For each model and round, ``python -m benchmarks.bench_models --models M`` runs once in a git worktree of the old
commit and once in one of the new commit (default: HEAD; a worktree, so uncommitted edits in this checkout are never
measured), the order swapping every round so load drift hits both alike; the ratio is of the
median step times, new / old, per model and embedding kind, over the rounds' medians. Both sides use this
environment's installed packages; each side imports its own ``mlet_jax`` (``python -m`` puts its folder first).

Command (the BENCHMARKS.md numbers; about 15 minutes on the 2-core CPU box)::

    .venv/bin/python -m benchmarks.bench_ab --old f6d2fe4 --new HEAD --rounds 2

The acceptance bar (issue 13): every model's median step time within 5% of the old engine or better.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import REPO, machine, write_jsonl
from mlet_jax.models import MODELS


def _run(folder: Path, model: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "rows.jsonl"
        # commits before the move of the benchmarks out of experiments/ have experiments/bench_models.py
        pkg = "benchmarks" if (folder / "benchmarks" / "bench_models.py").exists() else "experiments"
        p = subprocess.run([sys.executable, "-m", f"{pkg}.bench_models", "--models", model, "--steps", str(steps),
                            "--out", str(out)], cwd=folder, capture_output=True, text=True, check=False)
        if p.returncode:
            raise RuntimeError(f"bench_models in {folder} failed:\n{p.stderr[-3000:]}")
        return json.loads(out.read_text().splitlines()[0])


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", default="f6d2fe4", help="the commit to compare against")
    p.add_argument("--new", default="HEAD", help="the commit to measure")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=None, help="JSONL output path")
    args = p.parse_args(argv)
    new_commit = subprocess.run(["git", "rev-parse", "--short", args.new], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_dir, new_dir = Path(tmp) / "old", Path(tmp) / "new"
        for folder, commit in ((old_dir, args.old), (new_dir, new_commit)):
            subprocess.run(["git", "worktree", "add", "--detach", str(folder), commit], cwd=REPO, check=True,
                           capture_output=True)
        try:
            for model in args.models:
                got = {"old": [], "new": []}
                for r in range(args.rounds):
                    order = ("old", "new") if r % 2 == 0 else ("new", "old")
                    for side in order:
                        got[side].append(_run(old_dir if side == "old" else new_dir, model, args.steps))
                row = {"model": model, "old": args.old, "new": new_commit, "rounds": args.rounds,
                       "machine": machine()}
                for kind in ("single", "mlet"):
                    old_ms = statistics.median(x[f"{kind}_ms_per_step"] for x in got["old"])
                    new_ms = statistics.median(x[f"{kind}_ms_per_step"] for x in got["new"])
                    row.update({f"{kind}_old_ms": old_ms, f"{kind}_new_ms": new_ms,
                                f"{kind}_new_over_old": new_ms / old_ms})
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            for folder in (old_dir, new_dir):
                subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=REPO, capture_output=True)
    if args.out:
        write_jsonl(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
