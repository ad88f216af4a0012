"""Streaming of delimited text files as blocks of whole lines, with exact line numbers.

Plain or gzip (detected by its magic bytes, not the file name). Each block is handed to a columnar parser (polars)
in one call; the only per-line work is numpy over the block's bytes (field counts, line starts). A block whose
separator count is exactly right for its lines (:func:`quick_lines`) skips the per-line check: polars refuses a line
with too many fields, so with the total right no line can have too few either; where polars does refuse,
:func:`read_lines` raises :class:`RaggedLines` and the block goes the checked way (:func:`split_lines`), which names
the line.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from collections.abc import Iterator

import numpy as np

from mlet_jax.data.errors import BadRows, DataFormatError

BLOCK_BYTES = 16 << 20


def check_file(path: str) -> int:
    """Size in bytes of an existing, non-empty regular file (else a clear error)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DataFormatError(path, "not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise DataFormatError(path, "file is empty", line=1)
    return size


def is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


@dataclasses.dataclass
class Block:
    data: bytes          # whole lines, each ending in b"\n", CR stripped
    first_line: int      # 1-based line number of the block's first line
    bytes_read: int      # bytes of the (compressed) file consumed so far, for progress bars
    n_lines: int | None = None   # its line count, where known (iter_blocks counts them)


def iter_blocks(path: str, block_bytes: int = BLOCK_BYTES) -> Iterator[Block]:
    """Yield the file as blocks of whole lines. Truncated or corrupt gzip raises :class:`DataFormatError`."""
    check_file(path)
    raw = open(path, "rb")
    gz = is_gzip(path)
    fh = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
    line, tail = 1, b""
    try:
        while True:
            try:
                chunk = fh.read(block_bytes)
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
                raise DataFormatError(path, f"truncated or corrupt gzip stream ({e}); the last complete line read "
                                            f"was line {line - 1}", line=line) from e
            if not chunk:
                break
            chunk = tail + chunk
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                tail = chunk
                continue
            data, tail = chunk[:cut], chunk[cut:]
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
            n_lines = _count(data, b"\n")
            yield Block(data, line, raw.tell(), n_lines)
            line += n_lines
        if gz and line == 1 and not tail:
            raise DataFormatError(path, "gzip stream holds no data", line=1)
        if tail:
            yield Block(tail.replace(b"\r\n", b"\n").rstrip(b"\r") + b"\n", line, raw.tell())
    finally:
        fh.close()
        raw.close()


_COUNT_STEP = 1 << 20


def _count(data: bytes, byte: bytes) -> int:
    """Occurrences of one byte: numpy's vectorized compare, 1 MiB at a time into one small buffer (a 16 MiB block
    compared at once costs more in fresh pages than in compares); several times ``bytes.count``'s speed."""
    buf = np.frombuffer(data, np.uint8)
    out = np.empty(min(len(buf), _COUNT_STEP), bool)
    n = 0
    for lo in range(0, len(buf), _COUNT_STEP):
        part = buf[lo:lo + _COUNT_STEP]
        n += int(np.count_nonzero(np.equal(part, byte[0], out=out[:len(part)])))
    return n


@dataclasses.dataclass
class Lines:
    """The lines of one block that survived the field-count check."""

    data: bytes          # the kept lines (blank lines dropped)
    line_no: np.ndarray  # int64 [n]: 1-based line number of each kept line
    checked: bool = True  # False: only the block's total field count was checked (quick_lines)


class RaggedLines(Exception):
    """A block from :func:`quick_lines` that polars could not read as whole rows: check it line by line instead."""


def quick_lines(block: Block, sep: bytes, n_fields: int) -> Lines | None:
    """All lines of the block, unchecked, if its separator count is exactly ``n_fields - 1`` per line (else None).

    A blank line or a line with too few fields then implies one with too many elsewhere, which polars refuses
    (:func:`read_lines` turns that into :class:`RaggedLines`).
    """
    lines = block.n_lines if block.n_lines is not None else _count(block.data, b"\n")
    if n_fields < 2 or _count(block.data, sep) != (n_fields - 1) * lines:
        return None
    return Lines(block.data, block.first_line + np.arange(lines, dtype=np.int64), checked=False)


def read_lines(lines: Lines, columns, sep: str):
    """``lines`` read by polars as strings (one column per name in ``columns``, no quoting); an unchecked block
    that is not exactly one row per line raises :class:`RaggedLines`."""
    import polars as pl

    try:
        df = pl.read_csv(lines.data, has_header=False, separator=sep, quote_char=None,
                         schema=dict.fromkeys(columns, pl.String))
    except pl.exceptions.PolarsError:
        if lines.checked:
            raise
        raise RaggedLines from None
    if not lines.checked and len(df) != len(lines.line_no):
        raise RaggedLines
    return df


def split_lines(block: Block, path: str, sep: bytes, n_fields: int, bad: BadRows) -> Lines:
    """Check every line has ``n_fields`` fields (numpy over the bytes); drop blank lines and, if skipping, bad ones."""
    buf = np.frombuffer(block.data, np.uint8)
    ends = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    seps = np.flatnonzero(buf == sep[0])
    fields = np.diff(np.concatenate([[0], np.searchsorted(seps, ends)])) + 1
    line_no = block.first_line + np.arange(len(ends), dtype=np.int64)
    blank = ends == starts
    wrong = (fields != n_fields) & ~blank
    if wrong.any():
        i = int(np.argmax(wrong))
        bad.check(path, wrong, line_no, None, f"expected {n_fields} fields separated by {sep.decode()!r}, "
                  f"found {int(fields[i])}")
    drop = blank | wrong
    if wrong.any():
        bad.drop(wrong)
    if drop.any():
        keep_bytes = np.repeat(~drop, ends - starts + 1)
        return Lines(buf[keep_bytes].tobytes(), line_no[~drop])
    return Lines(block.data, line_no)
