"""mlet_jax against TorchRec on CPU, side by side in one run: DLRM train steps and the embedding part alone.

Same shapes, same ids on both sides: the peer bench's 26 Criteo-shaped vocabularies (:data:`VOCAB`, 840,543 rows),
d 16, DLRM bottom 512-256-128-16 (13 dense features), top 512-256-1, SGD lr 0.2 everywhere, mean BCE loss. The
Zipf(1.2) batches (ids clipped into each vocabulary, as the peer bench's ``trec_dlrm.py`` draws them) are drawn once
per batch size with ``--seed`` and saved to one temporary ``.npz`` that both sides read.

* **DLRM**: mlet_jax's :class:`mlet_jax.models.dlrm.DLRM` (row-sparse SGD table updates, the library default),
  single-layer and MLET k = ``--inner-dim``, against TorchRec 1.8.0's ``torchrec.models.dlrm.DLRM`` with the tables'
  SGD fused into the backward pass (FBGEMM).
* **embedding part alone** (``emb``): FBGEMM's CPU ``SplitTableBatchedEmbeddingBagsCodegen`` (EXACT_SGD fused into
  the backward) forward on the batch's ids and backward with a fixed upstream gradient, against mlet_jax's
  row-sparse path on the same ids and gradient, jitted: :func:`mlet_jax.row_sparse.dedup_rows`, the distinct-row
  compaction (:func:`~mlet_jax.row_sparse.compact_rows`, with its exact per-slot fallback), the gather, the
  occurrences' lookup, the scatter-add of their gradients and :meth:`mlet_jax.row_sparse.RowSparse.update`.

TorchRec's DCN is not run: torchrec 1.8.0 ships DCN only as ``DLRM_DCN``, a DLRM whose interaction is a low-rank
cross network over the bottom MLP's output and the embeddings, which has neither the shapes nor the layers of
mlet_jax's DeepCTR-style DCN (cross network and DNN side by side on the raw concatenated features).

The torch side (:mod:`benchmarks.torchrec_side`) runs in the TorchRec venv (``--trec-python``, default
``$MLET_TREC_PYTHON``; make it with the peer bench's ``setup_venv.sh`` then ``setup_torchrec.sh``) as a child that
waits in a blocking read while mlet_jax runs. Its OpenMP threads keep libgomp's default wait policy (spin a
while after each parallel region, then sleep; ``--omp-wait-policy``), and each mlet_jax segment starts after a
``SETTLE_S`` pause so that no spinning thread is left: ``PASSIVE`` (sleep at once) made FBGEMM's embedding step ~10x
slower on the 2-core box, and ``ACTIVE`` threads take the CPU from mlet_jax's segments. For every repeat, batch
size and part the two sides run ``--steps`` steps each, one after the other, so load drift hits both alike;
reported are medians of all timed steps and their ratios. Every segment, on both sides, first runs
``--segment-warmup`` untimed steps (default 1) and goes on with untimed steps for ``SETTLE_S``; mlet_jax's settle
is spent that way, not asleep. An idle pause lets this VM's CPU slow down: the steps right after a 0.3 s sleep
were up to ~1.5x slower (the embedding part's median at 4096 went from 4.9 to 7.2 ms with the pause alone, no torch
side), which only mlet_jax's segments paid while torch's started right after ours. The same run measures the
machine's ceilings (:func:`benchmarks.bench_ceilings.measure`) and each mlet_jax step as a fraction of its floor:
FLOPs per step (XLA's cost analysis of the compiled step) at the in-run ``jnp.dot`` GFLOP/s of the MLP's largest
layer, plus a random gather and a random scatter-add of every distinct row of the batch at the in-run random rows/s
(the slower of the two); ``floor_fraction`` is that floor over the median step.

Command (BENCHMARKS.md)::

    MLET_TREC_PYTHON=/work/trecvenv/bin/python .venv/bin/python -m benchmarks.bench_torchrec --out /tmp/trec.jsonl

``--no-torch`` runs the mlet_jax side alone (no venv needed); ``--toy`` shrinks the vocabularies and MLPs (tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np

from benchmarks.common import add_external_path, describe, machine, require_path, step_gflop

SETTLE_S = 0.3  # libgomp's default spin (300,000 rounds) ends well within this
TREC_PYTHON_ENV = "MLET_TREC_PYTHON"  # the python of the TorchRec venv (setup_torchrec.sh)

# The peer bench's Criteo-shaped vocabularies (gen_data.py --max-vocab 100000; trec_dlrm.py): 26 fields, 840,543 rows.
VOCAB = (1460, 583, 100000, 100000, 305, 24, 12517, 633, 3, 93145, 5683, 100000, 3194, 27, 14992, 100000, 10, 5652,
         2173, 4, 100000, 18, 15, 100000, 105, 100000)
TOY_VOCAB = (50, 7, 300, 1000, 3)
NUM_DENSE = 13
PARTS = ("dlrm", "emb")
FULL_MLPS = {"bottom_mlp": (512, 256, 128), "top_mlp": (512, 256)}  # hidden layers; both sides add d and 1
TOY_MLPS = {"bottom_mlp": (16, 8), "top_mlp": (16, 8)}


def zipf_batches(vocab, batch: int, n_batches: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    """``n_batches`` batches of ``batch`` rows: Zipf(1.2) field-local ids clipped into each vocabulary, uniform dense
    features, 25% positive labels, and one fixed N(0, 1e-3) upstream gradient ``[batch, F, dim]`` for the embedding
    part."""
    rng = np.random.default_rng([seed, batch])
    ids = np.stack([np.stack([np.minimum(rng.zipf(1.2, batch) - 1, v - 1) for v in vocab], 1)
                    for _ in range(n_batches)]).astype(np.int32)
    return {f"ids_{batch}": ids,
            f"dense_{batch}": rng.random((n_batches, batch, NUM_DENSE), dtype=np.float32),
            f"label_{batch}": (rng.random((n_batches, batch)) < 0.25).astype(np.float32),
            f"grad_{batch}": (1e-3 * rng.standard_normal((batch, len(vocab), dim))).astype(np.float32)}


def compact_plan_for(vocab, batch: int, first_ids=None):
    """The library's compact plan for one id per field, single-layer (``(tile, capacity_tiles, may_overflow)``):
    with ``first_ids`` (``[batch, F]`` field-local ids), the capacity the train step takes from its first batch
    (``TrainConfig.compact_headroom`` by default times its distinct rows,
    :meth:`mlet_jax.training.Trainer.compact_capacity`); without, :data:`~mlet_jax.row_sparse.COMPACT_FRACTION`."""
    from mlet_jax.row_sparse import capacity_for, compact_plan
    from mlet_jax.training import COMPACT_HEADROOM

    cap = None
    if first_ids is not None and COMPACT_HEADROOM:
        rows = np.asarray(first_ids) + np.concatenate([[0], np.cumsum(vocab)[:-1]])[None, :]
        cap = capacity_for(rows, vocab, 1, COMPACT_HEADROOM)
    return compact_plan(vocab, (1,) * len(vocab), batch, tiled=False, capacity_tiles=cap)


def embedding_step(vocab, batch: int, dim: int, lr: float = 0.2, first_ids=None):
    """``(init, step)`` of mlet_jax's row-sparse embedding part alone: ``step(table, rs_state, scratch, ids_BxF,
    grad_BxFxD) -> (table, rs_state, scratch, emb_BxFxD)``, jitted, the table, state and scratch donated; the compact
    capacity from ``first_ids`` as the train step takes it (:func:`compact_plan_for`)."""
    import jax
    import jax.numpy as jnp

    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.row_sparse import CompactRows, RowSparse, compact_rows, dedup_rows, read_rows, spill_plan

    n_f = len(vocab)
    offsets = jnp.asarray(np.concatenate([[0], np.cumsum(vocab)[:-1]]), jnp.int32)
    rs = RowSparse(OptimizerSpec("sgd", lr))
    slots = (1,) * n_f
    plan = compact_plan_for(vocab, batch, first_ids)

    def grads(table, rows_G, ref_BxF, grad_BxFxD):
        emb_G = table.at[rows_G].get(mode="promise_in_bounds")
        out = emb_G.at[ref_BxF].get(mode="promise_in_bounds")      # every occurrence's row
        g_G = jnp.zeros_like(emb_G).at[ref_BxF].add(grad_BxFxD)      # what jax.grad of that lookup gives
        return out, g_G

    def step(table, rs_state, scratch, ids_BxF, grad_BxFxD):
        rows_U, slot_BxF, scratch = dedup_rows(ids_BxF + offsets[None, :], scratch)
        spilled = None
        if plan is None:
            out, g = grads(table, rows_U, slot_BxF, grad_BxFxD)
            rows = rows_U
        else:
            tile, cap_tiles, may_overflow = plan
            if not may_overflow:
                c = compact_rows(rows_U, slot_BxF, slots, tile, cap_tiles)
                out, g = grads(table, c.rows_C, c.ref_BxS, grad_BxFxD)
                rows = c.rows_C
            else:  # as the library's step: the first `cap` rows, then the spill chunks the batch fills
                spill_tiles, n_spill = spill_plan(vocab, slots, batch, tile, cap_tiles)
                c = compact_rows(rows_U, slot_BxF, slots, tile, cap_tiles + n_spill * spill_tiles)
                cap, spill = tile * cap_tiles, tile * spill_tiles
                n_used = jnp.clip(-(-(c.n_tiles - cap_tiles) // spill_tiles), 0, n_spill)
                full = jnp.zeros((c.rows_C.size, dim), table.dtype).at[:cap].set(
                    table.at[c.rows_C[:cap]].get(mode="promise_in_bounds"))

                def forward(i, carry):  # as the library's: the loop carries the table it reads (read_rows)
                    t, f = carry
                    x, t = read_rows({"t": t}, jax.lax.dynamic_slice_in_dim(c.rows_C, cap + i * spill, spill))
                    return t["t"], jax.lax.dynamic_update_slice_in_dim(f, x["t"], cap + i * spill, 0)

                table, full = jax.lax.fori_loop(0, n_used, forward, (table, full))
                out = full.at[c.ref_BxS].get(mode="promise_in_bounds")
                g_full = jnp.zeros_like(full).at[c.ref_BxS].add(grad_BxFxD)
                g = g_full[:cap]
                rows = CompactRows(c.rows_C, cap, spill, n_used)

                def spilled(i):
                    return jax.lax.dynamic_slice_in_dim(g_full, cap + i * spill, spill)
        table, rs_state = rs.update(table, rs_state, rows, g, spilled)
        return table, rs_state, scratch, out

    def init(seed: int = 0):
        n = int(sum(vocab))
        table = jax.random.uniform(jax.random.key(seed), (n, dim), jnp.float32, -0.01, 0.01)
        return table, rs.init(table), jnp.zeros((n,), jnp.int32)

    return init, jax.jit(step, donate_argnums=(0, 1, 2))


def dlrm_trainer(vocab, kind: str, dim: int, inner_dim: int, toy: bool, chunk_samples: int | None = None):
    """mlet_jax's DLRM at the benchmark's shapes, row-sparse SGD lr 0.2 (the library default for SGD);
    ``chunk_samples``: :attr:`mlet_jax.training.TrainConfig.chunk_samples` (``None``: the library default)."""
    from mlet_jax.embeddings import EmbeddingSpec
    from mlet_jax.models.dlrm import DLRM
    from mlet_jax.optim import OptimizerSpec
    from mlet_jax.training import TrainConfig, Trainer

    spec = (EmbeddingSpec("single", dim=dim) if kind == "single" else
            EmbeddingSpec("mlet", dim=dim, inner_dim=inner_dim, projection_std=0.25))
    model = DLRM(vocab_sizes=tuple(vocab), num_dense=NUM_DENSE, embedding=spec, **(TOY_MLPS if toy else FULL_MLPS))
    return Trainer(model, TrainConfig(optimizer=OptimizerSpec("sgd", 0.2), chunk_samples=chunk_samples))


def dlrm_sides(kinds, chunks) -> list[tuple[str, int | None, str]]:
    """``(kind, chunk_samples, label)`` of every mlet_jax DLRM side: the label is the kind, with ``_chunkN`` (``N``
    0 for one pass, ``default`` for the library's) when several chunk settings run side by side."""
    chunks = tuple(chunks) or (None,)
    return [(k, c, k if len(chunks) == 1 else f"{k}_chunk{'default' if c is None else c}")
            for k in kinds for c in chunks]


class TorchSide:
    """The torch side as a child process: one JSON command per line in, one JSON answer per line out."""

    def __init__(self, python: str, data: str, threads: int, wait_policy: str = "DEFAULT"):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": ""}  # nothing of mlet_jax's venv leaks into the torch venv
        env.pop("OMP_WAIT_POLICY", None)
        if wait_policy != "DEFAULT":  # DEFAULT: libgomp's own (spin a while, then sleep)
            env["OMP_WAIT_POLICY"] = wait_policy
        self.wait_policy = wait_policy
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchrec_side.py")
        self.proc = subprocess.Popen([python, script, "--data", data, "--threads", str(threads)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the torch side exited (status {self.proc.wait()}); its error is above")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"torch side: {out['error']}")
        return out

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self.proc.wait(timeout=60)


def _cost_gflop(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) / 1e9


def run(*, batches=(1024, 4096), repeats: int = 3, steps: int = 10, n_batches: int = 8, dim: int = 16,
        inner_dim: int = 64, kinds=("single", "mlet"), parts=PARTS, trec_python: str | None = None, threads: int = 2,
        wait_policy: str = "DEFAULT",
        seed: int = 0, toy: bool = False, ceilings: bool = True, chunks=(None,), segment_warmup: int = 1,
        log=print) -> list[dict]:
    """Run the side-by-side; return one row per (part, batch, side) plus a ceilings row (and print each).

    ``segment_warmup``: untimed steps at the start of every segment, on both sides (:data:`SETTLE_S`).

    ``chunks``: the DLRM sides' ``TrainConfig.chunk_samples`` settings (``None``: the library default), each a side
    of its own (:func:`dlrm_sides`), all alternating."""
    import jax

    vocab = TOY_VOCAB if toy else VOCAB
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mlet_trec_") as work:
        data_path = os.path.join(work, "batches.npz")
        bottom, top = (TOY_MLPS if toy else FULL_MLPS).values()
        arrays = {"vocab": np.asarray(vocab, np.int64), "dim": np.asarray(dim), "num_dense": np.asarray(NUM_DENSE),
                  "bottom_mlp": np.asarray(bottom), "top_mlp": np.asarray(top)}
        for b in batches:
            arrays.update(zipf_batches(vocab, b, n_batches, dim, seed))
        np.savez(data_path, **arrays)
        torch = TorchSide(trec_python, data_path, threads, wait_policy) if trec_python else None
        try:
            rows = _run(arrays, vocab, batches, repeats, steps, n_batches, dim, inner_dim, dlrm_sides(kinds, chunks),
                        parts, torch, toy, ceilings, log, jax, segment_warmup)
        finally:
            if torch is not None:
                torch.close()
    return rows


def _run(arrays, vocab, batches, repeats, steps, n_batches, dim, inner_dim, sides, parts, torch, toy, ceilings, log,
         jax, segment_warmup):
    from benchmarks.bench_ceilings import measure

    t_start = time.perf_counter()
    jx: dict = {}  # (part, kind, batch) -> [state, step, staged batches, gflop, compile s]
    offsets = np.concatenate([[0], np.cumsum(vocab)[:-1]])
    distinct = {b: float(np.mean([np.unique(arrays[f"ids_{b}"][i] + offsets).size for i in range(n_batches)]))
                for b in batches}
    for b in batches:
        staged = [jax.device_put({"dense": arrays[f"dense_{b}"][i], "ids": arrays[f"ids_{b}"][i],
                                  "label": arrays[f"label_{b}"][i]}) for i in range(n_batches)]
        if "dlrm" in parts:
            for kind, chunk, label in sides:
                t0 = time.perf_counter()
                trainer = dlrm_trainer(vocab, kind, dim, inner_dim, toy, chunk)
                state = trainer.init(0, staged[0])
                compiled = trainer.train_step.lower(state, staged[0]).compile()
                for i in range(2):  # warm
                    state, _ = compiled(state, staged[i % n_batches])
                jax.block_until_ready(state)
                gflop = step_gflop(trainer, state, staged[0])  # the one-pass twin's: a scan counts once
                jx["dlrm", label, b] = [state, compiled, staged, gflop, time.perf_counter() - t0,
                                        trainer.chunk_samples]
                log(f"compiled mlet_jax dlrm {label} batch {b} in {jx['dlrm', label, b][4]:.0f} s")
        if "emb" in parts:
            init, step = embedding_step(vocab, b, dim, first_ids=arrays[f"ids_{b}"][0])
            ids = [jax.device_put(arrays[f"ids_{b}"][i]) for i in range(n_batches)]
            grad = jax.device_put(arrays[f"grad_{b}"])
            t0 = time.perf_counter()
            carry = init(0)
            compiled = step.lower(*carry, ids[0], grad).compile()
            for i in range(2):
                *carry, _ = compiled(*carry, ids[i % n_batches], grad)
            jax.block_until_ready(carry)
            jx["emb", "single", b] = [carry, compiled, (ids, grad), _cost_gflop(compiled), time.perf_counter() - t0]
    ceil0 = measure(batch=max(batches), repeats=3, copy_mib=64 if toy else 256,
                    gather_n=10_000 if toy else 1_000_000) if ceilings else {}
    if torch is not None:
        ceil0.update(torch.ask(cmd="ceil", m=max(batches)))

    times: dict = {}

    def one_step(key, i):
        entry = jx[key]
        if key[0] == "dlrm":
            entry[0], _ = entry[1](entry[0], entry[2][i % n_batches])
            jax.block_until_ready(entry[0])
        else:
            ids, grad = entry[2]
            *carry, emb = entry[1](*entry[0], ids[i % n_batches], grad)
            jax.block_until_ready((carry, emb))
            entry[0] = carry

    def jax_segment(key):
        # Untimed steps first: at least `segment_warmup`, and with a torch side for SETTLE_S, while torch's OpenMP
        # threads stop spinning. Busy, not asleep: after an idle pause this VM's CPU takes ~10 ms of work to come
        # back to speed (a numpy gather 3.4 ms -> 1.0 ms), and the mlet_jax steps right after a 0.3 s sleep were
        # up to 1.5x slower, which the torch side, starting right after ours, never paid.
        settle = SETTLE_S if torch is not None and torch.wait_policy == "DEFAULT" else 0.0
        t_end, i = time.perf_counter() + settle, 0
        while i < segment_warmup or time.perf_counter() < t_end:
            one_step(key, i)
            i += 1
        out = []
        for j in range(i, i + steps):
            t0 = time.perf_counter()
            one_step(key, j)
            out.append(time.perf_counter() - t0)
        return out

    for r in range(repeats):
        for b in batches:
            for part in parts:
                for label in ([s[2] for s in sides] if part == "dlrm" else ["single"]):
                    times.setdefault((part, f"mlet_jax_{label}", b), []).extend(jax_segment((part, label, b)))
                if torch is not None:
                    times.setdefault((part, "torchrec", b), []).extend(torch.ask(cmd=part, batch=b, steps=steps,
                                                                                 warmup=segment_warmup,
                                                                                 warmup_s=SETTLE_S)
                                                                       ["times"])
        log(f"repeat {r + 1}/{repeats} done, {time.perf_counter() - t_start:.0f} s, load {os.getloadavg()[0]:.1f}")
    ceil1 = measure(batch=max(batches), repeats=3, copy_mib=64 if toy else 256,
                    gather_n=10_000 if toy else 1_000_000) if ceilings else {}
    ceil = {k: max(v, ceil1.get(k, v)) if isinstance(v, float) and not k.endswith("_ms") else v
            for k, v in ceil0.items() if k != "config"}
    m = machine()
    rows = []
    for (part, side, b), ts in times.items():
        med = statistics.median(ts)
        row = {"part": part, "side": side, "batch": b, "samples_per_s": b / med, "ms_per_step": 1e3 * med,
               "samples_per_s_min_step": b / min(ts), "distinct_rows_per_batch": distinct[b],
               "ms_per_step_min": 1e3 * min(ts), "steps_timed": len(ts)}
        if side.startswith("mlet_jax"):
            entry = jx[part, side[len("mlet_jax_"):], b]
            row["gflop_per_step"] = entry[3]
            row["compile_s"] = entry[4]
            if part == "dlrm":
                row["chunk_samples"] = entry[5]
            if "jax_matmul_mlp_gflops" in ceil:
                flop_ms = 1e3 * entry[3] / ceil["jax_matmul_mlp_gflops"]
                # a random gather and a random scatter-add of every distinct row (the occurrences then read the
                # gathered rows, which are cache-resident); the MLPs and the interaction are in the FLOPs
                row_ms = 1e3 * 2 * distinct[b] / (1e6 * min(ceil["jax_random_Mrows_per_s"],
                                                            ceil["jax_random_scatter_add_Mrows_per_s"]))
                row["floor_ms"] = flop_ms + row_ms
                row["floor_fraction"] = row["floor_ms"] / row["ms_per_step"]
        rows.append(row)
    by = {(r["part"], r["side"], r["batch"]): r for r in rows}
    for r in rows:
        peer = by.get((r["part"], "torchrec", r["batch"]))
        if peer and r["side"] != "torchrec":
            r["ratio_vs_torchrec"] = r["samples_per_s"] / peer["samples_per_s"]
            # the same ratio per round (each side's median over its segment of the round), median over rounds
            mine, theirs = times[r["part"], r["side"], r["batch"]], times[r["part"], "torchrec", r["batch"]]
            r["ratio_vs_torchrec_paired"] = statistics.median(
                [statistics.median(theirs[i:i + steps]) / statistics.median(mine[i:i + steps])
                 for i in range(0, len(mine), steps)])
        small = by.get((r["part"], r["side"], min(batches)))
        if small and r["batch"] != min(batches):
            r["per_sample_ratio_vs_smallest_batch"] = r["samples_per_s"] / small["samples_per_s"]
    for r in rows:
        r["machine"] = m
        if torch is not None:
            r["torch"] = {k: torch.info.get(k) for k in ("torch", "torchrec", "fbgemm_gpu", "threads")}
            r["torch"]["omp_wait_policy"] = torch.wait_policy
        log(json.dumps({k: v for k, v in r.items() if k != "machine"}))
    rows.append({"part": "ceilings", "ceilings": ceil, "ceilings_before": ceil0, "ceilings_after": ceil1,
                 "wall_s": time.perf_counter() - t_start, "machine": m})
    log(json.dumps(rows[-1]["ceilings"]))
    return rows


def markdown(rows: list[dict]) -> str:
    """The side-by-side table of :func:`run`'s rows."""
    lines = ["| part | batch | side | samples/s | ms/step (median; min) | vs TorchRec | per sample vs smallest batch "
             "| GFLOP/step | floor fraction |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["part"] == "ceilings":
            continue

        def f(key, fmt, r=r):
            return format(r[key], fmt) if key in r else ""

        lines.append(f"| {r['part']} | {r['batch']} | {r['side']} | {r['samples_per_s']:,.0f} | "
                     f"{r['ms_per_step']:.1f}; {r['ms_per_step_min']:.1f} | {f('ratio_vs_torchrec', '.2f')} | "
                     f"{f('per_sample_ratio_vs_smallest_batch', '.2f')} | {f('gflop_per_step', '.2f')} | "
                     f"{f('floor_fraction', '.2f')} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_external_path(p, "--trec-python", TREC_PYTHON_ENV, "python of the TorchRec venv (setup_torchrec.sh)")
    p.add_argument("--no-torch", action="store_true", help="the mlet_jax side alone")
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--kinds", nargs="+", default=["single", "mlet"], choices=["single", "mlet"])
    p.add_argument("--repeats", type=int, default=3, help="alternation rounds")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side, part, batch and round")
    p.add_argument("--segment-warmup", type=int, default=1,
                   help="untimed steps at the start of every segment, both sides (0: time them all, as before "
                        "2026-12-03 evening: mlet_jax's first step after the settle pause is slow)")
    p.add_argument("--n-batches", type=int, default=8, help="distinct batches per batch size (cycled)")
    p.add_argument("--inner-dim", type=int, default=64, help="MLET's k")
    p.add_argument("--threads", type=int, default=2, help="torch's threads")
    p.add_argument("--omp-wait-policy", default="DEFAULT", choices=["DEFAULT", "PASSIVE", "ACTIVE"],
                   help="torch's OpenMP threads between parallel regions: libgomp's default (spin a while, then "
                        "sleep; mlet_jax's segments start after a pause), sleep at once (PASSIVE: FBGEMM's "
                        "embedding step ~10x slower here), or spin forever (ACTIVE: they take CPU from mlet_jax's "
                        "segments; a diagnostic only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy", action="store_true", help="tiny vocabularies and MLPs (tests)")
    p.add_argument("--no-ceilings", action="store_true")
    p.add_argument("--chunk-samples", nargs="+", default=None, metavar="N",
                   help="the DLRM sides' TrainConfig.chunk_samples (0: one pass; 'default': the library's); several "
                        "values run as sides of their own, alternating (default: the library's)")
    p.add_argument("--out", default=None, help="JSONL output path")
    a = p.parse_args(argv)
    for opt in ("repeats", "steps", "n_batches", "inner_dim", "threads"):
        if getattr(a, opt) < 1:
            p.error(f"argument --{opt.replace('_', '-')}: must be >= 1")
    if any(b < 1 for b in a.batches):
        p.error("argument --batches: every batch size must be >= 1")
    chunks = []
    for c in a.chunk_samples or ["default"]:
        if c != "default" and not (c.isdigit()):
            p.error(f"argument --chunk-samples: {c!r} is neither a number of samples >= 0 nor 'default'")
        chunks.append(None if c == "default" else int(c))
    if a.out:
        from mlet_jax.io import check_output_file

        try:
            check_output_file(a.out, "--out")
        except (ValueError, OSError) as e:
            p.error(f"argument --out: {e}")
    trec = None if a.no_torch else require_path(p, a.trec_python, "--trec-python", TREC_PYTHON_ENV)
    print(f"machine: {describe(machine())}", flush=True)
    rows = run(batches=tuple(a.batches), repeats=a.repeats, steps=a.steps, n_batches=a.n_batches,
               inner_dim=a.inner_dim, kinds=tuple(a.kinds), parts=tuple(a.parts), trec_python=trec,
               threads=a.threads, wait_policy=a.omp_wait_policy, seed=a.seed, toy=a.toy,
               ceilings=not a.no_ceilings, chunks=tuple(chunks), segment_warmup=a.segment_warmup,
               log=lambda s: print(s, flush=True))
    print(markdown(rows))
    if a.out:
        from mlet_jax.io import write_json_output

        write_json_output(a.out, rows, "mlet_jax.bench_torchrec/1", "--out")
    return rows


if __name__ == "__main__":
    from mlet_jax.runtime import reexec_with_tuned_malloc  # not at the top: the torch venv has no mlet_jax

    reexec_with_tuned_malloc()
    main()
