"""``python -m mlet_jax.data prepare criteo|avazu|movielens|table --input PATH --out DIR [options]``.

Parses the raw files once into a cache directory of memory-mapped arrays (see :mod:`mlet_jax.data.cache`), with a
progress bar; training then reads it with ``--dataset NAME --data-dir DIR``. Only the options given are passed on;
an option the dataset does not take is an error.
"""

from __future__ import annotations

import argparse
import json
import sys

from mlet_jax.data.errors import DataFormatError
from mlet_jax.data.registry import FILE_DATASETS, prepare


def _csv(s: str) -> list[str]:
    return [c for c in s.split(",") if c]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mlet_jax.data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="parse raw files into a cache directory")
    p.add_argument("dataset", choices=FILE_DATASETS)
    p.add_argument("--input", required=True, help="raw file or folder")
    p.add_argument("--out", required=True, help="cache directory to write")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a matching cache exists")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("options (default: the dataset's own)")
    g.add_argument("--min-count", type=int)
    g.add_argument("--hash-buckets", type=int)
    g.add_argument("--vocab-split", choices=("train", "all"))
    g.add_argument("--on-bad-row", choices=("error", "skip"))
    g.add_argument("--seed", type=int)
    g.add_argument("--test-fraction", type=float)
    g.add_argument("--valid-fraction", type=float)
    g.add_argument("--days", type=int, help="criteo: days in the file (7)")
    g.add_argument("--hour-dense", action="store_const", const=True, help="avazu: hour of day as a dense feature")
    g.add_argument("--split", help="movielens: random|timestamp; table: random|sequential")
    g.add_argument("--label-threshold", type=float, help="movielens/table: label = value >= threshold")
    g.add_argument("--zip-prefix", type=int, help="movielens: zip code characters kept")
    g.add_argument("--genre-pooling", choices=("sum", "mean"), help="movielens")
    g.add_argument("--encoding", help="movielens/table: text encoding")
    g.add_argument("--label", help="table: label column")
    g.add_argument("--categorical", type=_csv, help="table: comma-separated categorical columns")
    g.add_argument("--numeric", type=_csv, help="table: comma-separated numeric columns")
    g.add_argument("--format", choices=("auto", "csv", "parquet"), help="table")
    g.add_argument("--separator", help="table: CSV separator")
    g.add_argument("--log1p", action="store_const", const=True, help="table: log(1 + max(x, 0)) on numeric columns")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    skip = {"cmd", "dataset", "input", "out", "rebuild", "no_progress"}
    options = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    try:
        ds = prepare(args.dataset, args.input, args.out, progress=not args.no_progress, rebuild=args.rebuild,
                     **options)
    except (DataFormatError, FileNotFoundError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = ds.meta
    print(json.dumps({"out": m["cache_dir"], "splits": m.get("splits"), "rows": m.get("rows"),
                      "skipped_rows": m.get("skipped_rows"), "vocab_sizes": list(ds.schema.vocab_sizes),
                      "build_seconds": m.get("build_seconds")}))
    if m.get("skipped_rows"):
        print(f"skipped {m['skipped_rows']} bad rows, e.g. {m['examples'][:3]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
