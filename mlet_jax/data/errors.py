"""Errors that name the file, line (or row) and column of bad input, and the skip-and-count policy."""

from __future__ import annotations

import numpy as np

ON_BAD_ROW = ("error", "skip")


class DataFormatError(ValueError):
    """Bad input: names the file, the line (or row) and the column."""

    def __init__(self, path: str, message: str, *, line: int | None = None, row: int | None = None,
                 column: str | None = None):
        self.path, self.line, self.row, self.column, self.message = str(path), line, row, column, message
        where = [self.path]
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(", ".join(where) + ": " + message)


class BadRows:
    """Applies ``on_bad_row``: raise on the first bad row, or skip and count them."""

    def __init__(self, policy: str = "error", *, unit: str = "line", keep_examples: int = 5):
        if policy not in ON_BAD_ROW:
            raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {policy!r}")
        self.policy, self.unit, self.keep_examples = policy, unit, keep_examples
        self.count = 0
        self.examples: list[str] = []

    def check(self, path: str, bad: np.ndarray, where: np.ndarray, column: str | None, message: str,
              values=None) -> None:
        """Report rows flagged in ``bad`` (bool [n]); ``where[i]`` is row i's line (or row) number.

        ``message`` may contain ``{value}``, filled with the offending value. In "error" mode the first flagged row
        raises :class:`DataFormatError`; in "skip" mode only examples are kept (counting happens in :meth:`drop`).
        """
        if not bad.any():
            return
        first = int(np.argmax(bad))
        value = None if values is None else values[first]
        msg = message.format(value=value)
        kw = {self.unit: int(where[first])}
        if self.policy == "error":
            raise DataFormatError(path, msg, column=column, **kw)
        if len(self.examples) < self.keep_examples:
            self.examples.append(str(DataFormatError(path, msg, column=column, **kw)))

    def drop(self, bad: np.ndarray) -> np.ndarray:
        """Count the flagged rows and return the keep mask."""
        self.count += int(bad.sum())
        return ~bad

    def summary(self) -> dict:
        return {"on_bad_row": self.policy, "skipped_rows": self.count, "examples": list(self.examples)}
