"""FuxiCTR's own preprocessing of small generated Criteo_x4 / Avazu_x4 files: the reference for ``mlet_jax.data.bars``.

Generates small files in the format of BARS's published splits (``train.csv``, ``valid.csv``, ``test.csv``, CSV with
a header; Criteo: ``Label, I1..I13, C1..C26``; Avazu: ``id, click, hour, C1, ..., C21``) that exercise every rule:
missing and negative integers, the bucket boundaries, tokens below and above each minimum count, empty strings,
tokens seen only in validation or test, hours on weekdays and weekends. Then, under an interpreter that has
``fuxictr`` (FuxiCTR 2.3.7 from the package index; it needs ``polars<1``, whose ``Expr.apply`` its dataset code
calls), it runs FuxiCTR's ``build_dataset`` with BARS's dataset configs (``reczoo/BARS``,
``ranking/ctr/DCN/DCN_{criteo,avazu}_x4_00{1,2}/*/dataset_config.yaml``, ``feature_cols`` copied below) and the
dataset's ``CustomizedFeatureProcessor`` (``fuxictr/datasets/{criteo,avazu}.py``), and records its vocabulary
(``feature_vocab.json``) and the id arrays of the three splits in ``fuxictr_<protocol>.npz``.

This script imports only numpy, pandas and fuxictr (no mlet_jax), so it runs in FuxiCTR's own venv. The command
that made ``tests/fixtures/bars`` (about 30 s; pip needs no torch for the preprocessing)::

    python3 -m venv /work/fxvenv && /work/fxvenv/bin/pip install fuxictr==2.3.7 "polars<1"
    /work/fxvenv/bin/python experiments/parity_fuxictr.py --out tests/fixtures/bars

``--out`` must be missing, empty, or a folder this script wrote before (it holds ``fuxictr_versions.json``); only
the files it writes are replaced. ``--inputs DIR`` reads the CSVs from DIR instead of generating them (the live test
in ``tests/test_bars.py`` runs FuxiCTR on the committed inputs this way).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

MARKER = "fuxictr_versions.json"
CRITEO_I = [f"I{i}" for i in range(1, 14)]
CRITEO_C = [f"C{i}" for i in range(1, 27)]
AVAZU_C = ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
           "device_id", "device_ip", "device_model", "device_type", "device_conn_type", "C14", "C15", "C16", "C17",
           "C18", "C19", "C20", "C21"]
# BARS dataset_config.yaml feature_cols (FuxiCTR 1 spelled fill_na as na_value; FuxiCTR 2 ignores it and fills
# floats with 0 and strings with "", the same values).
CONFIGS = {
    "criteo": {"label_col": {"dtype": "float", "name": "Label"},
               "feature_cols": [{"active": True, "dtype": "float", "na_value": 0, "name": CRITEO_I,
                                 "preprocess": "convert_to_bucket", "type": "categorical"},
                                {"active": True, "dtype": "str", "na_value": "", "name": CRITEO_C,
                                 "type": "categorical"}]},
    "avazu": {"label_col": {"dtype": "float", "name": "click"},
              "feature_cols": [{"active": False, "dtype": "str", "name": "id", "type": "categorical"},
                               {"active": True, "dtype": "str", "name": "hour", "preprocess": "convert_hour",
                                "type": "categorical"},
                               {"active": True, "dtype": "str", "name": AVAZU_C, "type": "categorical"},
                               {"active": True, "dtype": "str", "name": "weekday", "preprocess": "convert_weekday",
                                "type": "categorical"},
                               {"active": True, "dtype": "str", "name": "weekend", "preprocess": "convert_weekend",
                                "type": "categorical"}]},
}
MIN_COUNT = {"criteo_x4_001": 10, "criteo_x4_002": 2, "avazu_x4_001": 2, "avazu_x4_002": 1}
ROWS = {"train": 600, "valid": 100, "test": 100}


def _zipf_tokens(rng, n: int, vocab: list[str], a: float = 1.3) -> np.ndarray:
    p = 1.0 / np.arange(1, len(vocab) + 1) ** a
    return np.asarray(vocab, object)[rng.choice(len(vocab), n, p=p / p.sum())]


def generate(dataset: str, seed: int = 0) -> dict[str, str]:
    """CSV text of train, valid and test in the published x4 format."""
    import pandas as pd

    rng = np.random.default_rng(seed + (0 if dataset == "criteo" else 1))
    n = sum(ROWS.values())
    cols: dict[str, np.ndarray] = {}
    if dataset == "criteo":
        cols["Label"] = rng.integers(0, 2, n).astype(str)
        for j, c in enumerate(CRITEO_I):
            # small values and the bucket boundaries (3 = e^sqrt(1.2), 8/9, 17/18, ...) plus a long tail
            edge = np.array([-3, -2, -1, 0, 1, 2, 3, 4, 7, 8, 9, 16, 17, 18, 33, 34, 75, 76, 1000, 123456])
            v = np.where(rng.random(n) < 0.5, rng.choice(edge, n),
                         np.floor(np.exp(rng.normal(1.5 + 0.3 * j, 2.0, n)))).astype(np.int64)
            if c != "I2":
                v = np.abs(v)
            s = v.astype(str).astype(object)
            s[rng.random(n) < 0.15] = ""
            cols[c] = s
        for j, c in enumerate(CRITEO_C):
            vocab = [f"{int(x):08x}" for x in rng.integers(0, 2**32, 20 + 5 * j)]
            s = _zipf_tokens(rng, n, vocab)
            s[rng.random(n) < 0.1] = ""
            cols[c] = s
    else:
        cols["id"] = rng.integers(10**18, 10**19 - 1, n, dtype=np.uint64).astype(str)
        cols["click"] = rng.integers(0, 2, n).astype(str)
        days = rng.integers(21, 31, n)  # 2014-10-21 (Tuesday) .. 2014-10-30; 25, 26 are a weekend
        hours = rng.integers(0, 24, n)
        cols["hour"] = np.array([f"1410{d:02d}{h:02d}" for d, h in zip(days, hours, strict=True)], object)
        for j, c in enumerate(AVAZU_C):
            vocab = ([str(x) for x in rng.integers(0, 5000, 8 + 3 * j)] if j < 2 or j > 12 else
                     [f"{int(x):08x}" for x in rng.integers(0, 2**32, 8 + 3 * j)])
            s = _zipf_tokens(rng, n, vocab)
            s[rng.random(n) < 0.05] = ""
            cols[c] = s
    df = pd.DataFrame(cols)
    out, lo = {}, 0
    for split, k in ROWS.items():
        part = df.iloc[lo:lo + k]
        if split != "train":  # tokens never seen in train: out-of-vocabulary
            cat = CRITEO_C[0] if dataset == "criteo" else "site_id"
            part = part.copy()
            part.iloc[:5, part.columns.get_loc(cat)] = [f"unseen{split}{i}" for i in range(5)]
        out[split] = part.to_csv(index=False, lineterminator="\n")
        lo += k
    return out


def run_fuxictr(protocol: str, input_dir: str, work: str) -> dict[str, np.ndarray]:
    """FuxiCTR's build_dataset on ``input_dir/{train,valid,test}.csv``: vocabulary and id arrays."""
    import pandas as pd

    dataset = protocol.split("_")[0]
    if dataset == "criteo":
        from fuxictr.datasets.criteo import CustomizedFeatureProcessor
    else:
        from fuxictr.datasets.avazu import CustomizedFeatureProcessor
    from fuxictr.preprocess import build_dataset

    cfg = CONFIGS[dataset]
    params = {"dataset_id": protocol, "data_root": work, "data_format": "csv",
              "train_data": os.path.join(input_dir, "train.csv"), "valid_data": os.path.join(input_dir, "valid.csv"),
              "test_data": os.path.join(input_dir, "test.csv"), "min_categr_count": MIN_COUNT[protocol],
              "feature_cols": json.loads(json.dumps(cfg["feature_cols"])), "label_col": dict(cfg["label_col"])}
    enc = CustomizedFeatureProcessor(**params)
    build_dataset(enc, **params)
    with open(os.path.join(work, protocol, "feature_vocab.json")) as fh:
        vocab = json.load(fh)
    fields = [f for f in enc.feature_map.features]  # the config's order (id is inactive, so absent)
    rec: dict[str, np.ndarray] = {"fields": np.asarray(fields)}
    for f in fields:
        toks = [t for t in vocab[f] if t not in ("__PAD__", "__OOV__")]
        rec[f"vocab_tokens/{f}"] = np.asarray(toks, dtype=str)
        rec[f"vocab_ids/{f}"] = np.asarray([vocab[f][t] for t in toks], np.int64)
        rec[f"oov_id/{f}"] = np.asarray(vocab[f]["__OOV__"], np.int64)
    for split in ("train", "valid", "test"):
        df = pd.read_parquet(os.path.join(work, protocol, f"{split}.parquet"))
        rec[f"ids/{split}"] = np.stack([df[f].to_numpy().astype(np.int64) for f in fields], axis=1)
        rec[f"label/{split}"] = df[cfg["label_col"]["name"]].to_numpy().astype(np.float32)
    return rec


def _check_out(out: str) -> None:
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MARKER)):
        raise SystemExit(f"--out {out}: a non-empty folder this script did not write (no {MARKER}); give a new one")
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"--out {out}: not a folder")


def _write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the inputs and FuxiCTR's outputs")
    ap.add_argument("--inputs", default=None, help="read {criteo,avazu}/{train,valid,test}.csv from here")
    ap.add_argument("--protocols", default=",".join(MIN_COUNT), help="comma-separated")
    ap.add_argument("--seed", type=int, default=0, help="of the generated files")
    args = ap.parse_args(argv)
    protocols = [p for p in args.protocols.split(",") if p]
    bad = [p for p in protocols if p not in MIN_COUNT]
    if bad:
        ap.error(f"argument --protocols: unknown {bad}; known: {', '.join(MIN_COUNT)}")
    if args.inputs and not all(os.path.isfile(os.path.join(args.inputs, p.split("_")[0], f"{s}.csv"))
                               for p in protocols for s in ROWS):
        ap.error(f"argument --inputs: {args.inputs} lacks {{criteo,avazu}}/{{train,valid,test}}.csv")
    _check_out(args.out)
    import fuxictr
    import pandas as pd
    import polars as pl

    os.makedirs(args.out, exist_ok=True)
    inputs = args.inputs or args.out
    if not args.inputs:
        for dataset in sorted({p.split("_")[0] for p in protocols}):
            os.makedirs(os.path.join(args.out, dataset), exist_ok=True)
            for split, text in generate(dataset, args.seed).items():
                _write_bytes(os.path.join(args.out, dataset, f"{split}.csv"), text.encode())
    for protocol in protocols:
        work = tempfile.mkdtemp(prefix="fuxictr-")
        try:
            rec = run_fuxictr(protocol, os.path.join(inputs, protocol.split("_")[0]), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        tmp = os.path.join(args.out, f".fuxictr_{protocol}.tmp-{os.getpid()}.npz")
        np.savez_compressed(tmp, **rec)
        os.replace(tmp, os.path.join(args.out, f"fuxictr_{protocol}.npz"))
        print(f"{protocol}: vocab sizes {[int(rec[f'oov_id/{f}']) + 1 for f in rec['fields']]}", file=sys.stderr)
    versions = {"fuxictr": fuxictr.__version__, "polars": pl.__version__, "pandas": pd.__version__,
                "numpy": np.__version__, "python": sys.version.split()[0], "seed": args.seed,
                "command": "python experiments/parity_fuxictr.py " + " ".join(argv or sys.argv[1:])}
    _write_bytes(os.path.join(args.out, MARKER), (json.dumps(versions, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
