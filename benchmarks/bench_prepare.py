"""``prepare criteo|avazu`` at 1M, 4M and full size: wall time, rows/s and peak RSS, against a pandas pipeline.

Each run is its own subprocess (``python -m mlet_jax.data prepare DATASET --input PREFIX --out CACHE``), its peak
RSS read from the kernel's rusage of that child (``os.wait4``), so runs do not share a high-water mark. Row counts
below the file's are prefixes of it (its first N lines, written once into ``--workdir``). The pandas pipeline does
the same work (parse every column, the dataset's dense transform, per-field vocabularies by ``value_counts`` on the
training rows, ``map`` to ids, the same split, ``np.save`` of the split arrays) on a prefix it can hold in memory
(``--pandas-rows``); ours and pandas alternate on that prefix for ``--rounds`` rounds. Each run also records its
CPU seconds (user + system, all threads; ``cpu_s``), and the summary the best/best ratio of both wall and CPU.

    .venv/bin/python benchmarks/bench_prepare.py criteo --input /work/big/criteo/train.txt \\
        --rows 1000000,4000000,all --pandas-rows 1000000 --workdir /work/big/bench --keep-full /work/big/criteo_cache

Prints one JSON line per run and a final summary line. Needs pandas for the comparison (``pip install pandas``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks.pandas_criteo import pandas_criteo

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def prefix_file(src: str, rows: int, dataset: str, workdir: str) -> str:
    """The first ``rows`` data rows of ``src`` (and Avazu's header), written once under ``workdir``."""
    name = "train.txt" if dataset == "criteo" else "train"
    d = os.path.join(workdir, f"{dataset}_{rows}")
    out = os.path.join(d, name)
    if os.path.exists(out):
        return out
    os.makedirs(d, exist_ok=True)
    want = rows + (1 if dataset == "avazu" else 0)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        left = want
        while left:
            buf = fi.read(64 << 20)
            if not buf:
                break
            k = buf.count(b"\n")
            if k >= left:
                cut = -1
                for _ in range(left):
                    cut = buf.index(b"\n", cut + 1)
                fo.write(buf[:cut + 1])
                left = 0
            else:
                fo.write(buf)
                left -= k
    if left:
        os.remove(tmp)
        raise SystemExit(f"{src}: has fewer than {rows} rows")
    os.replace(tmp, out)
    return out


def run_child(cmd: list[str], cwd: str, env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, the child's own peak RSS (MiB) and its exit status."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-3000:]}")
    # cpu_s: the child's user + system CPU (every thread), which a loaded machine inflates far less than wall
    return {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1), "stdout": out}


def ours(dataset: str, path: str, cache: str) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    r = run_child([sys.executable, "-m", "mlet_jax.data", "prepare", dataset, "--input", path, "--out", cache,
                   "--no-progress"], cwd=os.path.dirname(cache))
    with open(os.path.join(cache, "schema.json")) as fh:
        meta = json.load(fh)
    r.pop("stdout")
    return r | {"rows": meta["rows"], "finalize_s": meta.get("finalize_seconds"),
                "vocab_sizes": meta.get("schema", {}).get("vocab_sizes", meta.get("vocab_sizes"))}


# ---------------------------------------------------------------------------------------------- pandas pipelines


def pandas_avazu(path: str, out: str) -> int:
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    n = len(df)
    label = df["click"].astype(np.int64).to_numpy().astype(np.float32)
    t = pd.to_datetime(df["hour"], format="%y%m%d%H")
    df["hour_of_day"] = t.dt.hour.astype(str)
    df["weekday"] = t.dt.weekday.astype(str)
    cats = ["hour_of_day", "weekday", *[c for c in df.columns if c not in ("id", "click", "hour", "hour_of_day",
                                                                            "weekday")]]
    perm = np.random.default_rng(0).permutation(n)
    test = np.zeros(n, bool)
    test[perm[:int(round(n * 0.1))]] = True
    ids = np.empty((n, len(cats)), np.int32)
    for j, c in enumerate(cats):
        col = df[c]
        vc = col[~test].value_counts()
        mapping = pd.Series(np.arange(1, len(vc) + 1, dtype=np.int32), index=vc.index)
        ids[:, j] = col.map(mapping).fillna(0).to_numpy().astype(np.int32)
    _save(out, ids, np.zeros((n, 0), np.float32), label, {"train": ~test, "test": test})
    return n


def _save(out: str, ids, dense, label, parts: dict) -> None:
    os.makedirs(out, exist_ok=True)
    for nm, sl in parts.items():
        np.save(os.path.join(out, f"{nm}_ids.npy"), ids[sl])
        np.save(os.path.join(out, f"{nm}_dense.npy"), dense[sl])
        np.save(os.path.join(out, f"{nm}_label.npy"), label[sl])


def pandas_run(dataset: str, path: str, out: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = run_child([sys.executable, os.path.abspath(__file__), "--pandas-worker", dataset, path, out],
                  cwd=os.path.dirname(out))
    r.pop("stdout")
    shutil.rmtree(out, ignore_errors=True)
    return r


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--pandas-worker":
        _, _, dataset, path, out = sys.argv
        (pandas_criteo if dataset == "criteo" else pandas_avazu)(path, out)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", choices=("criteo", "avazu"))
    ap.add_argument("--input", required=True, help="the full-size raw file (python -m mlet_jax.data.generate)")
    ap.add_argument("--rows", default="1000000,4000000,all", help="comma list of row counts (prefixes) or 'all'")
    ap.add_argument("--pandas-rows", type=int, default=1_000_000, help="prefix for the pandas comparison (0: none)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating ours/pandas rounds on the pandas prefix")
    ap.add_argument("--workdir", default="/work/big/bench")
    ap.add_argument("--keep-full", help="move the full-size cache here (must not exist) instead of deleting it")
    a = ap.parse_args()
    if not os.path.isfile(a.input):
        ap.error(f"argument --input: {a.input}: no such file")
    if a.keep_full and os.path.lexists(a.keep_full):
        ap.error(f"argument --keep-full: {a.keep_full} exists; give a new path")
    try:
        rows = [r if r == "all" else int(r) for r in a.rows.split(",") if r]
    except ValueError:
        ap.error(f"argument --rows: comma list of integers or 'all', got {a.rows!r}")
    if a.rounds < 1 or a.pandas_rows < 0:
        ap.error("argument --rounds: must be >= 1 (and --pandas-rows >= 0)")
    os.makedirs(a.workdir, exist_ok=True)
    load = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    head = {"dataset": a.dataset, "commit": commit, "machine": f"{platform.machine()} {os.cpu_count()} cpu(s)",
            "loadavg_start": [round(x, 2) for x in load]}
    print(json.dumps(head), flush=True)
    results = []
    if a.pandas_rows:
        p = prefix_file(a.input, a.pandas_rows, a.dataset, a.workdir)
        for k in range(a.rounds):
            r1 = ours(a.dataset, p, os.path.join(a.workdir, "cache_cmp"))
            r1 |= {"pipeline": "mlet_jax", "round": k, "rows_per_s": round(r1["rows"] / r1["wall_s"])}
            print(json.dumps(r1), flush=True)
            r2 = pandas_run(a.dataset, p, os.path.join(a.workdir, "pandas_out"))
            r2 |= {"pipeline": "pandas", "round": k, "rows": a.pandas_rows,
                   "rows_per_s": round(a.pandas_rows / r2["wall_s"])}
            print(json.dumps(r2), flush=True)
            results += [r1, r2]
        shutil.rmtree(os.path.join(a.workdir, "cache_cmp"), ignore_errors=True)
    for n in rows:
        path = a.input if n == "all" else prefix_file(a.input, n, a.dataset, a.workdir)
        cache = os.path.join(a.workdir, f"cache_{a.dataset}_{n}")
        r = ours(a.dataset, path, cache)
        r |= {"pipeline": "mlet_jax", "prefix": n, "input_bytes": os.path.getsize(path),
              "rows_per_s": round(r["rows"] / r["wall_s"]), "loadavg": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps(r), flush=True)
        results.append(r)
        if n == "all" and a.keep_full:
            os.rename(cache, a.keep_full)
        else:
            shutil.rmtree(cache, ignore_errors=True)
    cmp_ = [r for r in results if "round" in r]
    if cmp_:
        best = {pl: min(r["wall_s"] for r in cmp_ if r["pipeline"] == pl) for pl in ("mlet_jax", "pandas")}
        cpu = {pl: min(r["cpu_s"] for r in cmp_ if r["pipeline"] == pl) for pl in ("mlet_jax", "pandas")}
        print(json.dumps({"summary": "pandas prefix", "rows": a.pandas_rows, "best_wall_s": best,
                          "speedup": round(best["pandas"] / best["mlet_jax"], 2), "best_cpu_s": cpu,
                          "cpu_speedup": round(cpu["pandas"] / max(cpu["mlet_jax"], 1e-9), 2),
                          "loadavg_end": [round(x, 2) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    main()
