"""Checks of every ``prepare`` / ``load_dataset`` option, run before any file is read or written.

Each failure is an :class:`OptionError`: a ``ValueError`` whose ``option`` names the argument (the command line
prints it as ``argument --test-fraction: ...`` and exits 2) and whose message gives the accepted range.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Mapping
from numbers import Real

CHOICES = {"vocab_split": ("train", "all"), "on_bad_row": ("error", "skip"), "genre_pooling": ("sum", "mean"),
           "format": ("auto", "csv", "parquet")}
SPLITS = {"movielens": ("random", "timestamp"), "table": ("random", "sequential")}


class OptionError(ValueError):
    """A bad argument: ``option`` is its Python name (``test_fraction``), the message its accepted range."""

    def __init__(self, option: str, message: str):
        self.option, self.message = option, message
        super().__init__(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _fail(name: str, accepted: str, value) -> OptionError:
    return OptionError(name, f"{name} must be {accepted}, got {value!r}")


def _int_at_least(name: str, value, lo: int, *, per_field: bool = False, none_ok: bool = False) -> None:
    if per_field and isinstance(value, Mapping):
        for field, v in value.items():
            if not (none_ok and v is None) and not (_is_int(v) and v >= lo):
                raise OptionError(name, f"{name}[{field!r}] must be an integer >= {lo}, got {v!r}")
        return
    if none_ok and value is None:
        return
    if not (_is_int(value) and value >= lo):
        what = f"an integer >= {lo}" + (" (or one per field name)" if per_field else "")
        raise _fail(name, what + (" or None" if none_ok else ""), value)


def _str_list(name: str, value, *, required: bool = False) -> None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        raise _fail(name, "a list of strings", value)
    if required and not value:
        raise _fail(name, "a non-empty list of column names", value)


def check_options(name: str, o: Mapping) -> None:
    """Raise :class:`OptionError` for the first option of dataset ``name`` outside its accepted range."""
    for key, choices in CHOICES.items():
        if key in o and o[key] not in choices:
            raise _fail(key, "one of " + ", ".join(map(repr, choices)), o[key])
    if "split" in o and o["split"] not in SPLITS[name]:
        raise _fail("split", "one of " + ", ".join(map(repr, SPLITS[name])), o["split"])
    if "min_count" in o:
        _int_at_least("min_count", o["min_count"], 1, per_field=True)
    if "hash_buckets" in o:
        _int_at_least("hash_buckets", o["hash_buckets"], 1, per_field=True, none_ok=True)
    if "seed" in o:
        _int_at_least("seed", o["seed"], 0)
    if "days" in o:
        _int_at_least("days", o["days"], 2)
    if "zip_prefix" in o:
        _int_at_least("zip_prefix", o["zip_prefix"], 0)
    if "block_bytes" in o:
        _int_at_least("block_bytes", o["block_bytes"], 1)
    if "test_fraction" in o:
        t = o["test_fraction"]
        if not (_is_real(t) and 0 < t < 1):
            raise _fail("test_fraction", "in (0, 1): the test split may not be empty", t)
    if "valid_fraction" in o:
        v = o["valid_fraction"]
        if not (_is_real(v) and 0 <= v < 1):
            raise _fail("valid_fraction", "in [0, 1)", v)
        if o["test_fraction"] + v >= 1:
            raise OptionError("valid_fraction", f"test_fraction + valid_fraction must be < 1 (no rows left to "
                                                f"train on), got {o['test_fraction']} + {v}")
    for key in ("label_threshold", "impute_nan"):
        v = o.get(key)
        if v is not None and not (_is_real(v) and math.isfinite(v)):
            raise _fail(key, "a finite number or None", v)
    for key in ("hour_dense", "log1p"):
        if key in o and not isinstance(o[key], bool):
            raise _fail(key, "True or False", o[key])
    if "encoding" in o:
        try:
            codecs.lookup(o["encoding"])
        except (LookupError, TypeError):
            raise _fail("encoding", "a text encoding Python knows (utf-8, latin-1, ...)", o["encoding"]) from None
    if name == "table":
        _check_table(o)


def _check_table(o: Mapping) -> None:
    if not isinstance(o["label"], str) or not o["label"]:
        raise _fail("label", "the name of the label column", o["label"])
    if o["categorical"] is None:
        raise _fail("categorical", "a non-empty list of column names", None)
    _str_list("categorical", o["categorical"], required=True)
    _str_list("numeric", o["numeric"])
    _str_list("missing_values", o["missing_values"])
    cols = [o["label"], *o["categorical"], *o["numeric"]]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise OptionError("categorical", f"label, categorical and numeric columns must be distinct; "
                                         f"{dup} named twice")
    sep = o["separator"]
    if not isinstance(sep, str) or len(sep) != 1 or sep in "\n\r\"":
        raise _fail("separator", "one character other than a newline or a quote", sep)
