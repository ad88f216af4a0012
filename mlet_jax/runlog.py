"""The run log: what :func:`mlet_jax.training.fit` measured, as JSON lines written while it trains.

One JSON object per line, each written whole by one ``write`` call and flushed, so a killed run leaves a log whose
lines are all complete (at most the last one is cut, and :func:`read_records` skips it with a warning). Records carry
an ``event``:

* ``start``: the first line of every run (``format``, ``version``, ``step`` it starts from, ``resumed``,
  ``batch_size``, ``epochs``, ``seed``, ``steps_per_epoch``, ``time`` in UTC, and the caller's ``meta``: the CLI puts
  every setting there);
* ``train``: every ``log_every`` steps: ``step``, ``epoch``, ``loss`` (that step's training loss), ``samples_per_s``
  (since the previous ``train`` record, the compiling first step, evaluations and logging callbacks excluded) and
  ``elapsed_s`` (wall time since the start);
* ``eval``: each validation: ``step``, ``auc``, ``logloss``, ``pr_auc``;
* ``spectra``: :func:`mlet_jax.spectra.spectra_record` (``fields`` with singular values, effective rank,
  information abundance), when asked (``spectra_every=``);
* ``end``: ``step``, ``train_samples``, ``train_seconds``, ``samples_per_s``, ``first_step_s``, ``stopped_early``,
  ``best_step``; ``error`` instead when the run raised (``error``, ``message``);
* ``test``: the CLI's test metrics after training.

:class:`RunLog` writes only to a missing or empty file or to a run log it wrote before: it then appends a new run
(a resumed run continues its own log). Any other existing file is refused. :func:`runs` splits a log into its runs
and :func:`curves` resolves resumes (a run restarting at step ``s`` replaces the records after ``s`` of the runs
before it). ``python -m mlet_jax.plot`` draws the curves.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlet_jax.io import check_file_target

FORMAT = "mlet_jax.runlog"
VERSION = 1


class RunLogError(ValueError):
    """A file is not a readable run log; the message names the file and line."""


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "__array__"):
        return np.asarray(x).tolist()
    return str(x)


def _is_own(path: str) -> bool:
    """Whether ``path``'s first line is a run log's start record."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
        rec = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("format") == FORMAT and rec.get("event") == "start"


def check_target(path: str | os.PathLike, what: str = "run log") -> str:
    """Raise ``ValueError`` (naming ``path``) unless a run log may be written there; returns the path as a string.

    Allowed: a missing file in an existing, writable folder, an empty file, or a run log this module wrote.
    """
    path = os.fspath(check_file_target(path, what))
    if os.path.exists(path) and os.path.getsize(path) > 0 and not _is_own(path):
        raise ValueError(f"{what} {path!r} exists and is not a run log written by mlet_jax; refusing to write to it "
                         "(give another path or remove it)")
    return path


class RunLog:
    """Append-only JSON-lines writer (see the module docstring); a context manager.

    Args:
        path: the log file (checked by :func:`check_target`).
    """

    _fd: int | None = None

    def __init__(self, path: str | os.PathLike):
        self.path = check_target(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.appended = os.path.getsize(self.path) > 0
        self.records_written = 0
        self.last_step = 0  # the step of the newest record (an "error" record carries it)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line (one ``write`` call, so a kill leaves no half record behind it)."""
        if self._fd is None:
            raise ValueError(f"run log {self.path!r} is closed")
        line = (json.dumps(record, default=_jsonable, allow_nan=True) + "\n").encode()
        view = memoryview(line)
        while view:  # a regular file takes it in one call; loop only for the pathological short write
            view = view[os.write(self._fd, view):]
        self.records_written += 1
        if isinstance(record.get("step"), int):
            self.last_step = record["step"]

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


def start_record(*, step: int, resumed: bool, meta: Mapping[str, Any] | None = None, **fields) -> dict[str, Any]:
    """The ``start`` record (the first line of a run)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"event": "start", "format": FORMAT, "version": VERSION, "step": int(step), "resumed": bool(resumed),
            "time": now, **fields, "meta": dict(meta or {})}


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a run log, in order.

    Raises:
        RunLogError: the file is missing or unreadable, a line (other than a cut last line) is not a JSON object with
            an ``event`` and a ``step``, or the first record is not a run log's ``start`` record. The message names
            the file and the line.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise RunLogError(f"{path}: cannot read the run log ({e.strerror or e})") from None
    lines = data.split(b"\n")
    cut = lines[-1] != b""  # the writer ends every record with a newline: anything after the last one was cut
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            if cut and i == len(lines):
                warnings.warn(f"{path}, line {i}: skipping the cut last line (the run was killed while writing it)",
                              stacklevel=2)
                break
            msg = getattr(e, "msg", str(e))
            raise RunLogError(f"{path}, line {i}: not a JSON object ({msg})") from None
        if not (isinstance(rec, dict) and isinstance(rec.get("event"), str) and isinstance(rec.get("step"), int)):
            raise RunLogError(f"{path}, line {i}: a run-log record is a JSON object with 'event' and integer 'step'")
        if not out and not (rec["event"] == "start" and rec.get("format") == FORMAT):
            raise RunLogError(f"{path}, line {i}: not a run log (its first record is not a '{FORMAT}' start record)")
        out.append(rec)
    if not out:
        raise RunLogError(f"{path}, line 1: the run log is empty")
    return out


def runs(records: Sequence[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split records into runs, each beginning with its ``start`` record."""
    out: list[list[dict[str, Any]]] = []
    for rec in records:
        if rec["event"] == "start" or not out:
            out.append([])
        out[-1].append(dict(rec))
    return out


def curves(records: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The records of each event after resolving resumes, sorted by step: ``{"train": [...], "eval": [...], ...}``.

    A run starting at step ``s`` (a resume from a checkpoint, or a fresh run at step 0 in the same file) replaces
    every record of the runs before it with step > ``s`` (or >= ``s`` for ``spectra`` and ``start``: the restored
    state is recorded again).
    """
    kept: list[dict[str, Any]] = []
    for run in runs(records):
        s0 = run[0]["step"] if run[0]["event"] == "start" else -math.inf
        kept = [r for r in kept if r["step"] < s0 or (r["step"] == s0 and r["event"] not in ("spectra", "start"))]
        kept.extend(run)
    out: dict[str, list[dict[str, Any]]] = {}
    for r in kept:
        out.setdefault(r["event"], []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["step"])
    return out
