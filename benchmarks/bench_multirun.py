"""S runs in one vmapped program against S sequential runs: an ML-100K-sized DeepFM (issue 15 item 1).

MovieLens-100K shapes on the synthetic generator: fields user (943), item (1682), age (61), gender (2), occupation
(21), zip prefix (100), genre (19), release year (72); no dense features; 80,000 training rows. DeepFM as the paper
trains it: d = 16, DNN (256, 128), Adagrad lr 0.02 (torch semantics), loss summed over the batch, batch 256, one
epoch (312 steps); single-layer and MLET (k = 64, projection std 0.5) tables.

Both sides train the same ``S`` seeds through their real loops on the same batches: sequential is
``mlet_jax.training.fit`` once per seed, vmapped is ``mlet_jax.multirun.fit_many`` once. Every compiled function is
warmed up first; then the two sides alternate, one full set of ``S`` runs each per round, so load drift on a shared
machine hits both alike, and the ratio of the medians is reported, for wall time and for the process's CPU time (all
threads; on a machine other jobs load, wall time also counts the time the scheduler gave them).

Command (the BENCHMARKS.md numbers; about 2 minutes per kind on the 2-core CPU box when idle)::

    .venv/bin/python -m benchmarks.bench_multirun --runs 8 --rounds 3

``--profile`` adds a ``jax.profiler`` trace of 40 steps of each side and prints where a step's time goes (XLA ops by
category, summed, per run). Quick look: ``--steps 50 --rounds 1 --kinds single``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import statistics
import tempfile
import time

ML100K_VOCAB = (943, 1682, 61, 2, 21, 100, 19, 72)


def setup(kind: str, n_runs: int, n_train: int):
    from mlet_jax.data import make_synthetic
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models import build_model
    from mlet_jax.multirun import MultiTrainer, Runs
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer

    ds = make_synthetic(seed=0, n_train=n_train, n_valid=0, n_test=2_000, vocab_sizes=ML100K_VOCAB, num_dense=0)
    spec = EmbeddingSpec(kind, 16, 64 if kind == "mlet" else None, projection_std=0.5)
    model = build_model("deepfm", ds.schema, spec)
    cfg = TrainConfig(OptimizerSpec("adagrad", 0.02), loss_reduction="sum")
    return ds, Trainer(model, cfg), MultiTrainer(model, cfg, Runs(tuple(range(n_runs))))


def sides(ds, trainer, mt, batch_size: int):
    from mlet_jax.multirun import fit_many
    from mlet_jax.training import fit

    def sequential():
        states = [fit(trainer, ds.train, batch_size=batch_size, seed=0, state=trainer.init(s, _first(ds)),
                      progress=False)[0] for s in mt.runs.seeds]
        return [s.params for s in states]

    def vmapped():
        return fit_many(mt, ds.train, batch_size=batch_size, data_seed=0, progress=False)[0].params

    return {"sequential": sequential, "vmapped": vmapped}


def _first(ds):
    from mlet_jax.data import batches

    return next(batches(ds.train, 1, seed=0))


def profile(trainer, mt, ds, batch_size: int, n_steps: int = 40) -> dict:
    """Per-step XLA op time of each side (one run's step; all runs' vmapped step), summed by op category."""
    import jax

    from mlet_jax.data import batches

    bl = [jax.device_put(b) for b, _ in zip(batches(ds.train, batch_size, seed=0), range(n_steps + 5), strict=False)]
    out = {}
    for name, state, step in (("sequential (one run)", trainer.init(0, bl[0]), trainer.train_step),
                              ("vmapped (all runs)", mt.init(bl[0]), mt.train_step)):
        for b in bl[:5]:
            state, _ = step(state, b)
        jax.block_until_ready(state)
        with tempfile.TemporaryDirectory() as d:
            with jax.profiler.trace(d):
                for b in bl[5:]:
                    state, _ = step(state, b)
                jax.block_until_ready(state)
            events = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[-1]))["traceEvents"]
        ops = collections.Counter()
        for e in events:
            n = e.get("name", "")
            if e.get("ph") == "X" and not n.startswith("$") and not any(
                    w in n for w in ("Thunk", "Pjit", "Execute", "Parse", "end:")):
                ops[_category(n)] += e.get("dur", 0) / n_steps / 1000
        out[name] = dict(sorted(((k, round(v, 3)) for k, v in ops.items()), key=lambda kv: -kv[1]))
    return out


def _category(op: str) -> str:
    for key in ("dot", "ynn", "scatter", "gather", "copy", "transpose", "while", "sort"):
        if key in op:
            return {"ynn": "dot (ynn fusion)"}.get(key, key)
    return "other fusions"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_multirun", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=8, help="S: runs per program (and sequential runs)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of S sequential and S vmapped runs")
    p.add_argument("--kinds", nargs="+", default=["single", "mlet"], choices=["single", "mlet"])
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: one epoch, 312)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--profile", action="store_true", help="also print where a step's time goes")
    p.add_argument("--out", default=None, help="write the JSON record here")
    args = p.parse_args(argv)
    if args.runs < 1 or args.rounds < 1 or args.batch_size < 1 or (args.steps is not None and args.steps < 1):
        p.error("--runs, --rounds, --batch-size and --steps must be >= 1")
    if args.out:
        from mlet_jax.io import check_output_file

        try:
            check_output_file(args.out, "--out")
        except (ValueError, FileExistsError) as e:
            p.error(str(e))

    from benchmarks.common import describe, machine, timed
    from mlet_jax.io import write_json_output

    n_train = (args.steps if args.steps else 80_000 // args.batch_size) * args.batch_size
    print(describe(machine()))
    rec = {"runs": args.runs, "batch_size": args.batch_size, "n_train": n_train, "kinds": {}}
    for kind in args.kinds:
        ds, trainer, mt = setup(kind, args.runs, n_train)
        fns = sides(ds, trainer, mt, args.batch_size)
        for f in fns.values():  # compile everything (init, step, the loops' helpers) once
            timed(f)
        times, cpu = {k: [] for k in fns}, {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, f in fns.items():
                c0 = time.process_time()
                times[k].append(timed(f)[1])
                cpu[k].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        samples = args.runs * (n_train // args.batch_size) * args.batch_size
        r = {"seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
             "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
             "samples_per_s": {k: round(samples / v) for k, v in med.items()},
             "ratio_sequential_over_vmapped": round(med["sequential"] / med["vmapped"], 3),
             "cpu_ratio_sequential_over_vmapped": round(med_cpu["sequential"] / med_cpu["vmapped"], 3)}
        if args.profile:
            r["profile_ms_per_step"] = profile(trainer, mt, ds, args.batch_size)
        rec["kinds"][kind] = r
        sec, cs = r["seconds"], r["cpu_seconds"]
        print(f"{kind}: {args.runs} runs x {n_train // args.batch_size} steps; wall: sequential {sec['sequential']} s, "
              f"vmapped {sec['vmapped']} s, ratio {r['ratio_sequential_over_vmapped']}x; CPU time: sequential "
              f"{cs['sequential']} s, vmapped {cs['vmapped']} s, ratio {r['cpu_ratio_sequential_over_vmapped']}x")
        if args.profile:
            for side, ops in r["profile_ms_per_step"].items():
                print(f"  {side}: {sum(ops.values()):.3f} ms of XLA ops per step: {ops}")
    rec["machine"] = machine()
    if args.out:
        write_json_output(args.out, rec, "mlet_jax.bench.multirun/1", "--out")
    return rec


if __name__ == "__main__":
    main()
