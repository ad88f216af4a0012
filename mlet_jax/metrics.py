"""Quality metrics on host arrays: ROC-AUC (ties averaged), LogLoss and PR-AUC (average precision).

They match ``sklearn.metrics.roc_auc_score``, ``log_loss`` and ``average_precision_score`` (the tests check this on
data with ties) without depending on scikit-learn at run time.
"""

from __future__ import annotations

import numpy as np


def _check(labels, scores, name: str):
    y = np.asarray(labels, np.float64).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{name}: {y.size} labels but {s.size} scores")
    if y.size == 0:
        raise ValueError(f"{name}: empty input")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{name}: labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: scores contain NaN or infinity")
    return y, s


def _single_class(y, name):
    if y.min() == y.max():
        raise ValueError(f"{name} is undefined when only one class is present (all labels are {int(y[0])})")


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve; tied scores count one half (Mann-Whitney U with mid-ranks)."""
    y, s = _check(labels, scores, "roc_auc")
    _single_class(y, "roc_auc")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # mid-ranks of tie groups
    boundaries = np.flatnonzero(np.diff(s_sorted)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    mid = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(mid, ends - starts)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to ``[eps, 1 - eps]``)."""
    y, p = _check(labels, probs, "log_loss")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def log_loss_from_logits(labels, logits) -> float:
    """Mean binary cross-entropy computed stably from logits."""
    y, z = _check(labels, logits, "log_loss")
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def pr_auc(labels, scores) -> float:
    """Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds (as scikit-learn)."""
    y, s = _check(labels, scores, "pr_auc")
    _single_class(y, "pr_auc")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.concatenate([np.flatnonzero(np.diff(s_sorted)), [s.size - 1]])
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def sigmoid(x):
    x = np.asarray(x, np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def binary_metrics(labels, logits) -> dict[str, float]:
    """AUC, LogLoss and PR-AUC of logits."""
    return {"auc": roc_auc(labels, logits), "logloss": log_loss_from_logits(labels, logits),
            "pr_auc": pr_auc(labels, logits)}
