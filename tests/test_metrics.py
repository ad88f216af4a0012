"""Metrics against scikit-learn on random data with ties."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mlet_jax.metrics import binary_metrics, log_loss, log_loss_from_logits, pr_auc, roc_auc


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [3, 20, None])
def test_against_sklearn_with_ties(seed, levels):
    rng = np.random.default_rng(seed)
    n = 500
    y = (rng.random(n) < 0.3).astype(float)
    s = rng.standard_normal(n) + y
    if levels:
        s = np.round(s * levels / 6) / levels  # many ties
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert pr_auc(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    p = 1 / (1 + np.exp(-s))
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p), abs=1e-9)
    assert log_loss_from_logits(y, s) == pytest.approx(skm.log_loss(y, p), abs=1e-9)


def test_hand_values():
    # one tie between a positive and a negative counts one half: pairs (pos, neg) = 4, wins 2.5
    assert roc_auc([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(3.5 / 4)
    assert binary_metrics([0, 1], [-1.0, 1.0])["auc"] == 1.0


def test_single_class_and_bad_input():
    with pytest.raises(ValueError, match="only one class"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only one class"):
        pr_auc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [np.nan, 0.2])
    with pytest.raises(ValueError, match="labels"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        log_loss([], [])
    with pytest.raises(ValueError, match="2 labels but 3"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
