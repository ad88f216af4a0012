"""Criteo-Kaggle and Avazu files at full size (or any fraction of it), streamed with bounded memory.

``python -m mlet_jax.data.generate criteo|avazu --out PATH [--scale S] [--seed N]`` writes a file in the dataset's
raw format (what ``python -m mlet_jax.data prepare`` reads), block by block: the memory used does not depend on the
number of rows, and the output depends only on (dataset, scale, seed), never on the machine.

* **criteo**: ``train.txt``, tab-separated, no header: label, I1..I13 (integer counts, some negative, empty where
  missing at Criteo's per-column missing rates), C1..C26 (8-digit hex, empty where missing). 45,840,617 rows in 7
  days in file order; the 26 fields take exactly the Criteo-Kaggle per-field cardinalities of the DLRM reference
  (``CRITEO_KAGGLE_VOCAB``, 33,762,577 in all, the missing value counted as one of them as DLRM does).
* **avazu**: ``train``, CSV with the 24-column header ``id,click,hour,C1,banner_pos,...,C21``; ``hour`` is
  YYMMDDHH over 2014-10-21 00 .. 2014-10-30 23 in order (a daily cycle in volume), ``id`` a unique 64-bit integer;
  40,428,967 rows; the 21 categorical columns take Avazu's per-column cardinalities (``AVAZU_VOCAB``).

Ids are Zipf-like: a row draws rank r with probability ~ (r + 1)^-s over the field's K values, and a fixed set of
"cover" rows (row floor(j N / K) carries rank j) makes every one of the K values appear, so each field has exactly K
distinct values (new ids keep appearing over time, as in logs). The value is a bijective 32-bit mix of the rank, so
distinct ranks are distinct hex strings. Labels come from a hidden logistic model: a bias, a weight per (field, id)
from a hash (so no table is stored) and, for Criteo, a weight per dense column on the count's latent log-normal
draw; the positive rate is about 0.26 (Criteo) and 0.17 (Avazu). ``--scale S`` multiplies rows and every
cardinality above ``SMALL_FIELD`` by S (at least ``SMALL_FIELD``, at most the field's own size), so S = 0.001 is the
same data at 1/1000 of the size.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np
import polars as pl
import pyarrow as pa

CRITEO_ROWS = 45_840_617
AVAZU_ROWS = 40_428_967
# Distinct values per field of Criteo-Kaggle train.txt as counted by the DLRM reference (missing counted as a value).
CRITEO_KAGGLE_VOCAB = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                       5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
# Share of empty values per column of Criteo-Kaggle (approximate; 0 where the column is never empty).
CRITEO_DENSE_MISSING = (0.454, 0.0, 0.215, 0.217, 0.026, 0.224, 0.043, 0.0005, 0.043, 0.454, 0.043, 0.765, 0.217)
CRITEO_CAT_MISSING = (0, 0, 0.034, 0.034, 0, 0.121, 0, 0, 0, 0, 0, 0.034, 0, 0, 0, 0.034, 0, 0, 0.440, 0.440,
                      0.034, 0, 0, 0.034, 0.440, 0.440)
# Avazu train (40,428,967 rows): distinct values per categorical column (id and hour excluded).
AVAZU_VOCAB = {"C1": 7, "banner_pos": 7, "site_id": 4737, "site_domain": 7745, "site_category": 26, "app_id": 8552,
               "app_domain": 559, "app_category": 36, "device_id": 2686408, "device_ip": 6729486,
               "device_model": 8251, "device_type": 5, "device_conn_type": 4, "C14": 2626, "C15": 8, "C16": 9,
               "C17": 435, "C18": 4, "C19": 68, "C20": 172, "C21": 60}
AVAZU_HEX = ("site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category", "device_id",
             "device_ip", "device_model")
# Columns whose most frequent value dominates (Avazu's device_id "a99f214a" is ~83% of rows; app_* of site traffic).
AVAZU_HEAD = {"device_id": 0.82, "app_id": 0.62, "app_domain": 0.65, "app_category": 0.62, "device_type": 0.9,
              "C1": 0.9, "banner_pos": 0.7, "C20": 0.45}
AVAZU_COLUMNS = ("id", "click", "hour", *AVAZU_VOCAB)
SMALL_FIELD = 100          # fields at most this large keep their size under --scale
BLOCK_ROWS = 1 << 17       # fixed: the output must not depend on a tuning knob
ZIPF_S = 1.1
CRITEO_CTR, AVAZU_CTR = 0.2562, 0.1698   # positive rates of the real files

_M32 = np.uint64(0xFFFFFFFF)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


def mix32(x: np.ndarray, salt: int) -> np.ndarray:
    """murmur3's 32-bit finalizer of ``x ^ salt``: a bijection of uint32, so distinct inputs stay distinct."""
    h = (np.asarray(x).astype(np.uint64) ^ np.uint64(salt & 0xFFFFFFFF)) & _M32
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    h ^= h >> np.uint64(16)
    return h.astype(np.uint32)


def mix64(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64's finalizer of ``x + salt``: a bijection of uint64."""
    with np.errstate(over="ignore"):
        z = np.asarray(x).astype(np.uint64) + np.uint64(salt & ((1 << 64) - 1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _unit(h: np.ndarray) -> np.ndarray:
    """uint32 hash -> a value in [-sqrt 3, sqrt 3) (mean 0, variance 1)."""
    return (h.astype(np.float64) / 2.0**32 * 2.0 - 1.0) * np.sqrt(3.0)


def scaled_size(k: int, scale: float) -> int:
    if k <= SMALL_FIELD:
        return k
    return int(min(k, max(SMALL_FIELD, round(k * scale))))


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    size: int             # distinct values, the missing value included when missing > 0
    missing: float = 0.0
    head: float = 0.0     # probability of rank 0 outside the Zipf draw
    salt: int = 0

    @property
    def values(self) -> int:   # distinct non-missing values
        return self.size - (1 if self.missing > 0 else 0)


def draw_ranks(spec: FieldSpec, rng: np.random.Generator, lo: int, hi: int, n_rows: int) -> np.ndarray:
    """Ranks in [0, K) for rows lo..hi-1, -1 where missing; rows floor(j N / K) carry rank j (never missing)."""
    m, k = hi - lo, spec.values
    u = rng.random(m)
    a = (k + 1.0) ** (1.0 - ZIPF_S) - 1.0
    ranks = np.floor((1.0 + u * a) ** (1.0 / (1.0 - ZIPF_S))).astype(np.int64) - 1
    np.clip(ranks, 0, k - 1, out=ranks)
    if spec.head > 0:
        ranks[rng.random(m) < spec.head] = 0
    if spec.missing > 0:
        ranks[rng.random(m) < spec.missing] = -1
    j = np.arange(-(-lo * k // n_rows), -(-hi * k // n_rows), dtype=np.int64)
    ranks[j * n_rows // k - lo] = j
    return ranks


def hex_strings(h: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    """8-digit lower-case hex of uint32 values (null where not ``valid``), built on arrow buffers."""
    m = len(h)
    data = _HEX[(h[:, None] >> _SHIFTS[None, :]) & np.uint32(15)]
    offsets = np.arange(0, 8 * m + 1, 8, dtype=np.int32)
    bufs = [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    nulls = 0
    if valid is not None and not valid.all():
        bufs[0] = pa.py_buffer(np.packbits(valid, bitorder="little"))
        nulls = int(m - valid.sum())
    return pl.from_arrow(pa.Array.from_buffers(pa.string(), m, bufs, null_count=nulls))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def calibrate(logit: np.ndarray, rate: float) -> float:
    """The bias b with mean(sigmoid(logit + b)) = rate (bisection; the first block's logits)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < rate else (lo, mid)
    return round(0.5 * (lo + hi), 6)


def criteo_fields(scale: float) -> list[FieldSpec]:
    return [FieldSpec(scaled_size(k, scale), CRITEO_CAT_MISSING[i], salt=0x9E3779B1 * (i + 1))
            for i, k in enumerate(CRITEO_KAGGLE_VOCAB)]


def avazu_fields(scale: float) -> dict[str, FieldSpec]:
    return {c: FieldSpec(scaled_size(k, scale), head=AVAZU_HEAD.get(c, 0.0), salt=0x85EBCA77 * (i + 1))
            for i, (c, k) in enumerate(AVAZU_VOCAB.items())}


def _id_weight(ranks: np.ndarray, salt: int) -> np.ndarray:
    """The hidden model's weight of each id (rank -1, missing, has its own)."""
    return _unit(mix32(ranks + 1, salt ^ 0x68E31DA4))


def criteo_block(fields: list[FieldSpec], seed: int, b: int, n_rows: int, bias: float | None) -> pl.DataFrame:
    lo, hi = b * BLOCK_ROWS, min(n_rows, (b + 1) * BLOCK_ROWS)
    m = hi - lo
    rng = np.random.default_rng([seed, 1, b])
    cols: dict[str, pl.Series] = {}
    logit = np.zeros(m)
    for i, miss in enumerate(CRITEO_DENSE_MISSING):
        z = rng.standard_normal(m)
        mu, sd = 0.5 + 0.35 * i, 1.0 + 0.08 * i
        x = np.floor(np.expm1(np.maximum(mu + sd * z, 0.0))).astype(np.int64)
        if i == 1:                       # I2 takes small negative values
            x = np.where(rng.random(m) < 0.03, -rng.integers(1, 4, m), x)
        valid = rng.random(m) >= miss
        logit += np.where(valid, 0.22 * (1 if i % 2 else -1) * z, 0.1)
        cols[f"I{i + 1}"] = pl.Series(x).set(pl.Series(~valid), None)
    for i, spec in enumerate(fields):
        r = draw_ranks(spec, rng, lo, hi, n_rows)
        w = 0.9 if spec.size <= SMALL_FIELD else 0.35
        logit += w * _id_weight(r, spec.salt)
        cols[f"C{i + 1}"] = hex_strings(mix32(np.maximum(r, 0), spec.salt), r >= 0)
    if bias is None:
        return logit
    label = (rng.random(m) < _sigmoid(logit + bias)).astype(np.int8)
    return pl.DataFrame({"label": label, **cols})


_HOURS = 240   # 2014-10-21 00 .. 2014-10-30 23


def avazu_hour_starts(n_rows: int) -> np.ndarray:
    """First row of each of the 240 hours (a daily cycle in volume, rows in time order)."""
    h = np.arange(_HOURS)
    w = 1.0 + 0.6 * np.sin(2 * np.pi * ((h % 24) - 8) / 24.0)
    return np.concatenate([[0], np.round(np.cumsum(w) / w.sum() * n_rows).astype(np.int64)])


def avazu_block(fields: dict[str, FieldSpec], seed: int, b: int, n_rows: int, starts: np.ndarray,
                bias: float | None) -> pl.DataFrame:
    lo, hi = b * BLOCK_ROWS, min(n_rows, (b + 1) * BLOCK_ROWS)
    m = hi - lo
    rng = np.random.default_rng([seed, 2, b])
    rows = np.arange(lo, hi, dtype=np.int64)
    hour = np.searchsorted(starts, rows, side="right") - 1
    day, hod = 21 + hour // 24, hour % 24
    logit = 0.4 * np.sin(2 * np.pi * hod / 24.0)
    cols = {"id": pl.Series(mix64(rows, seed * 0x9E3779B97F4A7C15 + 1)).cast(pl.String),
            "click": None,
            "hour": pl.Series(14100000 + day * 100 + hod).cast(pl.String)}
    for c, spec in fields.items():
        r = draw_ranks(spec, rng, lo, hi, n_rows)
        logit += (0.8 if spec.size <= SMALL_FIELD else 0.4) * _id_weight(r, spec.salt)
        if c in AVAZU_HEX:
            cols[c] = hex_strings(mix32(r, spec.salt))
        else:
            base = {"C1": 1001, "C14": 375, "C17": 112, "C19": 33, "C20": 100000, "C21": 1}.get(c, 0)
            v = base + r
            if c == "C20":
                v = np.where(r == 0, -1, v)
            cols[c] = pl.Series(v).cast(pl.String)
    if bias is None:
        return logit
    cols["click"] = pl.Series((rng.random(m) < _sigmoid(logit + bias)).astype(np.int8))
    return pl.DataFrame(cols)


def generate(dataset: str, out: str, *, scale: float = 1.0, seed: int = 0, rows: int | None = None,
             progress: bool = False) -> dict:
    """Write the file; returns {rows, bytes, seconds, cardinalities}. Refuses an existing ``out``."""
    if dataset not in ("criteo", "avazu"):
        raise ValueError(f"dataset must be 'criteo' or 'avazu', got {dataset!r}")
    if not (0 < scale <= 1):
        raise ValueError(f"scale must be in (0, 1], got {scale!r}")
    total = int(round((CRITEO_ROWS if dataset == "criteo" else AVAZU_ROWS) * scale))
    n = total if rows is None else int(rows)
    if not 1 <= n <= total:
        raise ValueError(f"rows must be in [1, {total}] (the file at scale {scale}), got {rows}")
    fields = criteo_fields(scale) if dataset == "criteo" else avazu_fields(scale)
    specs = fields if dataset == "criteo" else list(fields.values())
    if os.path.lexists(out):
        raise FileExistsError(f"{out}: exists; generate writes only a new file")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    t0 = time.perf_counter()
    starts = avazu_hour_starts(total) if dataset == "avazu" else None
    nb = -(-n // BLOCK_ROWS)
    if dataset == "criteo":
        bias = calibrate(criteo_block(fields, seed, 0, total, None), CRITEO_CTR)
    else:
        bias = calibrate(avazu_block(fields, seed, 0, total, starts, None), AVAZU_CTR)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"generate {dataset}", unit="row", unit_scale=True, dynamic_ncols=True)
    try:
        with open(tmp, "xb") as fh:
            if dataset == "avazu":
                fh.write((",".join(AVAZU_COLUMNS) + "\n").encode())
            for b in range(nb):
                if dataset == "criteo":
                    df = criteo_block(fields, seed, b, total, bias).head(n - b * BLOCK_ROWS)
                    df.write_csv(fh, separator="\t", include_header=False, null_value="", quote_style="never")
                else:
                    df = avazu_block(fields, seed, b, total, starts, bias).head(n - b * BLOCK_ROWS)
                    df.write_csv(fh, separator=",", include_header=False, quote_style="never")
                if bar is not None:
                    bar.update(len(df))
        os.replace(tmp, out)
    finally:
        if bar is not None:
            bar.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"dataset": dataset, "rows": n, "scale": scale, "seed": seed, "bias": bias, "bytes": os.path.getsize(out),
            "seconds": round(time.perf_counter() - t0, 1), "cardinalities": [s.size for s in specs]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mlet_jax.data.generate", description=__doc__.split("\n")[0])
    ap.add_argument("dataset", choices=("criteo", "avazu"))
    ap.add_argument("--out", required=True, help="file to write (must not exist)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full size in (0, 1] (default 1)")
    ap.add_argument("--rows", type=int, help="write only the first ROWS rows of the file (default: all of them, "
                                             "the full count times --scale)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if not (0 < a.scale <= 1):
        ap.error(f"argument --scale: accepted range (0, 1], got {a.scale}")
    if a.rows is not None and a.rows < 1:
        ap.error(f"argument --rows: must be >= 1, got {a.rows}")
    if os.path.lexists(a.out):
        ap.error(f"argument --out: {a.out} exists; generate writes only a new file")
    try:
        info = generate(a.dataset, a.out, scale=a.scale, seed=a.seed, rows=a.rows, progress=not a.no_progress)
    except ValueError as e:          # rows beyond the file at this scale
        ap.error(f"argument --rows: {e}")
    import json

    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
