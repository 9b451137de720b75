"""Classification metrics written out from their definitions (tests check them against scikit-learn).

Having them here, on plain numpy, lets reports also carry the pieces behind a number (confusion matrix,
reliability bins) and fixes the conventions: quadratic weighted kappa over the full ordinal range
``0..K-1`` (not only the grades that happen to occur), top-label ECE with equal-width bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "auroc",
    "auroc_ovr_macro",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "expected_grade",
    "log_loss",
    "macro_f1",
    "quadratic_weighted_kappa",
    "reliability_bins",
]


def _ints(a: np.ndarray | list[int]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of class indices, got shape {arr.shape}")
    return arr.astype(np.int64)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = _ints(y_true), _ints(y_pred)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError("y_true and y_pred must be non-empty and of equal length")
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    y_true, y_pred = _ints(y_true), _ints(y_pred)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: classes present in either array); 0 when undefined."""
    y_true, y_pred = _ints(y_true), _ints(y_pred)
    labels = sorted(set(y_true.tolist()) | set(y_pred.tolist())) if labels is None else list(labels)
    scores = []
    for c in labels:
        tp = np.sum((y_true == c) & (y_pred == c))
        fp = np.sum((y_true != c) & (y_pred == c))
        fn = np.sum((y_true == c) & (y_pred != c))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores))


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Cohen's kappa with weights ``(i - j)^2`` over grades ``0..n_classes-1``."""
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    n = cm.sum()
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / n
    idx = np.arange(n_classes)
    weights = (idx[:, None] - idx[None, :]) ** 2
    denom = np.sum(weights * expected)
    if denom == 0:
        return 1.0 if np.sum(weights * cm) == 0 else 0.0
    return float(1.0 - np.sum(weights * cm) / denom)


def auroc(y_binary: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney, average ranks for ties)."""
    y = _ints(y_binary)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((np.sum(ranks[y == 1]) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc_ovr_macro(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over the classes that have both positives and negatives."""
    y = _ints(y_true)
    values = [auroc((y == c).astype(int), probs[:, c]) for c in range(probs.shape[1]) if 0 < np.sum(y == c) < len(y)]
    return float(np.mean(values)) if values else float("nan")


def log_loss(y_true: np.ndarray, probs: np.ndarray, eps: float = 1e-12) -> float:
    y = _ints(y_true)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))))


@dataclass
class ReliabilityBins:
    """Per confidence bin: edges, mean confidence, accuracy and count (top-label)."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {k: np.asarray(v).tolist() for k, v in vars(self).items()}


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Top-label confidences in ``n_bins`` equal-width bins ``(lo, hi]`` (the first bin also holds 0)."""
    y = _ints(y_true)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / count
        acc = np.bincount(which, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(edges=edges, confidence=mean_conf, accuracy=acc, count=count)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy - mean confidence| (top-label, equal-width bins)."""
    bins = reliability_bins(y_true, probs, n_bins)
    used = bins.count > 0
    gaps = np.abs(bins.accuracy[used] - bins.confidence[used])
    return float(np.sum(gaps * bins.count[used]) / bins.count.sum())


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """Expected class index sum_k k * p_k (meaningful for ordinal scales)."""
    return probs @ np.arange(probs.shape[1], dtype=np.float64)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, *, ordinal: bool = False, y_pred: np.ndarray | None = None,
    n_bins: int = 15,
) -> dict[str, float]:
    """All headline numbers for one prediction set; ``y_pred`` defaults to the argmax of ``probs``."""
    probs = np.asarray(probs, dtype=np.float64)
    y = _ints(y_true)
    k = probs.shape[1]
    pred = probs.argmax(axis=1) if y_pred is None else _ints(y_pred)
    out = {
        "n": float(len(y)),
        "accuracy": accuracy(y, pred),
        "macro_f1": macro_f1(y, pred, labels=list(range(k))),
        "ece": expected_calibration_error(y, probs, n_bins),
        "nll": log_loss(y, probs),
    }
    if ordinal or k > 2:
        out["qwk"] = quadratic_weighted_kappa(y, pred, k)
    if ordinal:
        grade = np.clip(np.rint(expected_grade(probs)), 0, k - 1).astype(np.int64)
        out["qwk_expected_grade"] = quadratic_weighted_kappa(y, grade, k)
        out["mae_expected_grade"] = float(np.mean(np.abs(expected_grade(probs) - y)))
    if k == 2 and 0 < np.sum(y == 1) < len(y):
        out["auroc"] = auroc(y, probs[:, 1])
    elif k > 2:
        out["auroc_ovr_macro"] = auroc_ovr_macro(y, probs)
    return out
