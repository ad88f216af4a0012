"""Split rules: each returns uint8 codes [N] (0 train, 1 valid, 2 test) for rows in file order."""

from __future__ import annotations

import numpy as np

TRAIN, VALID, TEST = 0, 1, 2


def criteo_days(n: int, days: int = 7) -> np.ndarray:
    """The DLRM Criteo-Kaggle split: rows in file order are ``days`` equal days (the first ``n % days`` days one
    row longer); days 1..days-1 train; the last day is cut in half, first half test, second half validation
    (``np.array_split``, as the DLRM reference)."""
    if days < 2:
        raise ValueError(f"days must be >= 2, got {days}")
    per = n // days
    last_start = n - per  # the last day gets no extra row: extras go to the first days
    codes = np.full(n, TRAIN, np.uint8)
    n_last = n - last_start
    n_test = -(-n_last // 2)
    codes[last_start:last_start + n_test] = TEST
    codes[last_start + n_test:] = VALID
    return codes


def _sizes(n: int, test_fraction: float, valid_fraction: float) -> tuple[int, int]:
    for nm, v in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{nm} must be in [0, 1), got {v}")
    if test_fraction + valid_fraction >= 1.0:
        raise ValueError(f"test_fraction + valid_fraction must be < 1, got {test_fraction + valid_fraction}")
    return int(round(n * test_fraction)), int(round(n * valid_fraction))


def random_split(n: int, test_fraction: float = 0.1, valid_fraction: float = 0.0, seed: int = 0) -> np.ndarray:
    """Random rows (a seeded permutation) go to test, then validation; fractions are of all rows."""
    n_test, n_valid = _sizes(n, test_fraction, valid_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    codes = np.full(n, TRAIN, np.uint8)
    codes[perm[:n_test]] = TEST
    codes[perm[n_test:n_test + n_valid]] = VALID
    return codes


def ordered_split(order_key: np.ndarray | None, n: int, test_fraction: float = 0.1,
                  valid_fraction: float = 0.0) -> np.ndarray:
    """The earliest rows train, then validation, the latest test; order by ``order_key`` (stable) or file order."""
    n_test, n_valid = _sizes(n, test_fraction, valid_fraction)
    order = np.arange(n) if order_key is None else np.argsort(np.asarray(order_key), kind="stable")
    codes = np.full(n, TRAIN, np.uint8)
    codes[order[n - n_test:]] = TEST
    codes[order[n - n_test - n_valid:n - n_test]] = VALID
    return codes
