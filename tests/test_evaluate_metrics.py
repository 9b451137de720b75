"""Metrics agree with scikit-learn on fixed inputs; ECE matches a hand-computed example."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, log_loss, roc_auc_score

from orthofm.evaluate.metrics import (
    accuracy,
    auroc,
    auroc_ovr_macro,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    quadratic_weighted_kappa,
    reliability_bins,
)
from orthofm.evaluate.metrics import log_loss as our_log_loss

Y_TRUE = np.array([0, 0, 1, 2, 4, 3, 2, 1, 0, 4, 3, 3, 2, 0, 1, 2])
Y_PRED = np.array([0, 1, 1, 2, 3, 3, 1, 1, 0, 4, 2, 3, 2, 2, 0, 2])


def test_accuracy_and_macro_f1_match_sklearn() -> None:
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    # a class nobody predicted and nobody has: both give it F1 = 0 when asked for the full label set
    labels = [0, 1, 2, 3, 4, 5]
    assert macro_f1(Y_TRUE, Y_PRED, labels=labels) == pytest.approx(
        f1_score(Y_TRUE, Y_PRED, average="macro", labels=labels, zero_division=0))


def test_qwk_matches_sklearn_quadratic_kappa() -> None:
    assert quadratic_weighted_kappa(Y_TRUE, Y_PRED, 5) == pytest.approx(
        cohen_kappa_score(Y_TRUE, Y_PRED, weights="quadratic", labels=list(range(5))))
    # grade 3 never occurs: the full 0..4 scale still counts distances in grades, like sklearn with labels=
    y, p = np.array([0, 1, 2, 4, 4, 0]), np.array([0, 2, 2, 4, 1, 1])
    assert quadratic_weighted_kappa(y, p, 5) == pytest.approx(
        cohen_kappa_score(y, p, weights="quadratic", labels=list(range(5))))
    assert quadratic_weighted_kappa(Y_TRUE, Y_TRUE, 5) == pytest.approx(1.0)


def test_auroc_matches_sklearn_with_ties() -> None:
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    s = np.array([0.1, 0.8, 0.4, 0.4, 0.9, 0.2, 0.4, 0.7, 0.35, 0.05])
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=len(Y_TRUE))
    assert auroc_ovr_macro(Y_TRUE, probs) == pytest.approx(
        roc_auc_score(Y_TRUE, probs, multi_class="ovr", average="macro"))
    with pytest.raises(ValueError, match="both positive and negative"):
        auroc(np.ones(3, dtype=int), np.array([0.1, 0.2, 0.3]))


def test_log_loss_and_confusion_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), size=len(Y_TRUE))
    assert our_log_loss(Y_TRUE, probs) == pytest.approx(log_loss(Y_TRUE, probs, labels=list(range(5))))
    from sklearn.metrics import confusion_matrix as sk_cm

    assert np.array_equal(confusion_matrix(Y_TRUE, Y_PRED, 5), sk_cm(Y_TRUE, Y_PRED, labels=list(range(5))))


def test_ece_hand_computed() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.6, 0.4]])
    y = np.array([0, 1, 1, 1])
    # top-label confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.6 (wrong)
    # 2 bins: all four fall in (0.5, 1]: mean confidence 0.725, accuracy 0.5 -> ECE 0.225
    assert expected_calibration_error(y, probs, n_bins=2) == pytest.approx(0.225)
    # 10 bins: (0.5,0.6] holds 0.6, 0.6 (acc 0.5); (0.7,0.8] holds 0.8 (acc 0); (0.8,0.9] holds 0.9 (acc 1)
    # ECE = 2/4*|0.5-0.6| + 1/4*|0-0.8| + 1/4*|1-0.9| = 0.05 + 0.2 + 0.025 = 0.275
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.275)
    bins = reliability_bins(y, probs, n_bins=10)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 2, 0, 1, 1, 0]


def test_classification_metrics_bundle() -> None:
    probs = np.eye(5)[Y_PRED] * 0.8 + 0.04
    m = classification_metrics(Y_TRUE, probs, ordinal=True)
    assert m["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    assert m["qwk"] == pytest.approx(cohen_kappa_score(Y_TRUE, Y_PRED, weights="quadratic", labels=list(range(5))))
    assert "qwk_expected_grade" in m and "auroc_ovr_macro" in m
    binary = classification_metrics(np.array([0, 1, 1, 0]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]]))
    assert binary["auroc"] == pytest.approx(1.0)
