"""``python -m mlet_jax.data prepare criteo|avazu|movielens|table --input PATH --out DIR [options]``.

Parses the raw files once into a cache directory of memory-mapped arrays (see :mod:`mlet_jax.data.cache`), with a
progress bar; training then reads it with ``--dataset NAME --data-dir DIR``. Only the options given are passed on;
an option the dataset does not take is an error.

Exit status: 0 done; 2 a usage error (one line ``argument --NAME: accepted range, got VALUE``: options, a missing
``--input``, an ``--out`` that is not new, empty or one of our caches, or that is, holds or lies inside an input);
1 bad input data (one line naming file, line and column); 130 interrupted. Nothing is half-written either way.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from mlet_jax.data import bars
from mlet_jax.data.errors import DataFormatError
from mlet_jax.data.options import OptionError
from mlet_jax.data.registry import FILE_DATASETS, _module, prepare

_FLAGS = {"data_dir": "--input", "out": "--out", "dataset": "dataset"}


def _csv(s: str) -> list[str]:
    return [c for c in s.split(",") if c]


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``prog: error: argument --x: ...``) with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m mlet_jax.data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="parse raw files into a cache directory")
    p.add_argument("dataset", choices=FILE_DATASETS)
    p.add_argument("--input", required=True, help="raw file or folder")
    p.add_argument("--out", required=True, help="cache directory to write")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a matching cache exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--protocol", choices=tuple(bars.PROTOCOLS),
                   help="a BARS protocol: FuxiCTR's preprocessing and an x4 8:1:1 split (see mlet_jax.data.bars); "
                        "a folder with BARS's train.csv, valid.csv, test.csv uses those splits")
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
    g.add_argument("--missing-values", type=_csv,
                   help="table: comma-separated strings that mean missing besides the empty field (default: none)")
    g.add_argument("--impute-nan", type=float, help="table: value that replaces a numeric NaN (default: NaN is an "
                                                    "error)")
    return ap


def _flag(option: str) -> str:
    return _FLAGS.get(option, "--" + option.replace("_", "-"))


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    sub = f"{ap.prog} prepare"
    skip = {"cmd", "dataset", "input", "out", "rebuild", "no_progress", "protocol"}
    options = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    dataset = args.dataset
    if args.protocol:  # the preset fixes the preprocessing; only --on-bad-row and --seed (of the split) remain
        err = bars.check_cli(args.dataset, args.protocol, options, _flag)
        if err:
            print(f"{sub}: error: {err}", file=sys.stderr)
            return 2
        dataset, options = "bars", {**options, "protocol": args.protocol}
    takes = _module(dataset).DEFAULTS
    for k in options:
        if k not in takes:
            who = [d for d in FILE_DATASETS if k in _module(d).DEFAULTS]
            print(f"{sub}: error: argument {_flag(k)}: {args.dataset} does not take it (it is for "
                  f"{', '.join(who)})", file=sys.stderr)
            return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = prepare(dataset, args.input, args.out, progress=not args.no_progress, rebuild=args.rebuild,
                         **options)
    except OptionError as e:
        msg = e.message.removeprefix(e.option + " ")
        print(f"{sub}: error: argument {_flag(e.option)}: {msg}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"{sub}: error: argument --input: {e}", file=sys.stderr)
        return 2
    except DataFormatError as e:
        print(f"{sub}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{sub}: interrupted; nothing was written to {args.out}", file=sys.stderr)
        return 130
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    m = ds.meta
    print(json.dumps({"out": m["cache_dir"], "splits": m.get("splits"), "rows": m.get("rows"),
                      "skipped_rows": m.get("skipped_rows"), "vocab_sizes": list(ds.schema.vocab_sizes),
                      "build_seconds": m.get("build_seconds")}))
    if m.get("skipped_rows"):
        print(f"skipped {m['skipped_rows']} bad rows, e.g. {m['examples'][:3]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
