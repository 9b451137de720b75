"""Anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO and Spearman correlation.

Written for whole evaluation sets: pixel metrics pool every pixel of every image (tens of millions of
values), so AUROC is computed from ranks (Mann-Whitney U, ties counted half) and AUPRO from one sort,
both exact, instead of sweeping a grid of thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats

__all__ = ["aupro", "auroc", "auroc_ci95", "image_auroc", "pixel_auroc", "pro_curve", "roc_curve", "spearman"]


def _as_list(values: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """A 2D array is one image, a higher-dimensional array a stack along axis 0, a sequence a list."""
    if isinstance(values, np.ndarray):
        return [values] if values.ndim == 2 else list(values)
    return [np.asarray(v) for v in values]


def _flat(values: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.reshape(-1)
    return np.concatenate([np.asarray(v).reshape(-1) for v in values])


def auroc(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive); ties count 1/2."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes: got {n_pos} positives and {n_neg} negatives")
    ranks = stats.rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(
    scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROC curve (FPR, TPR) from (0, 0) to (1, 1), one point per distinct score (ties taken together,
    so the trapezoid area equals :func:`auroc`)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"a ROC curve needs both classes: got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tpr = np.cumsum(y_sorted)[last] / n_pos
    fpr = np.cumsum(~y_sorted)[last] / n_neg
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def auroc_ci95(
    scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int], n: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the AUROC over resampled images (resamples with one class
    only are skipped): the image-level sets here are a few hundred images, so the interval is the honest
    unit of comparison between methods and backbones."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        idx = rng.integers(0, y.size, y.size)
        if 0 < y[idx].sum() < y.size:
            draws.append(auroc(s[idx], y[idx]))
    if not draws:
        return float("nan"), float("nan")
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def image_auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Image-level AUROC: one score and one abnormal (1) / normal (0) label per image."""
    return auroc(np.asarray(scores), np.asarray(labels))


def pixel_auroc(maps: np.ndarray | Sequence[np.ndarray], masks: np.ndarray | Sequence[np.ndarray]) -> float:
    """Pixel-level AUROC pooled over all pixels of all images (maps and masks of matching shapes)."""
    if not isinstance(maps, np.ndarray):
        for m, g in zip(maps, masks, strict=True):
            if np.shape(m) != np.shape(g):
                raise ValueError(f"map shape {np.shape(m)} differs from mask shape {np.shape(g)}")
    return auroc(_flat(maps), _flat(masks))


def pro_curve(
    maps: np.ndarray | Sequence[np.ndarray], masks: np.ndarray | Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-region-overlap curve: (FPR, PRO) at every distinct threshold, FPR increasing.

    PRO(t) is the mean over all ground-truth connected components (8-connected in 2D, 26 in 3D, counted
    across all images) of the fraction of the component scoring >= t; FPR(t) the fraction of normal
    pixels scoring >= t. One sort gives both as cumulative sums.
    """
    maps_l, masks_l = _as_list(maps), _as_list(masks)
    if len(maps_l) != len(masks_l):
        raise ValueError(f"{len(maps_l)} maps but {len(masks_l)} masks")
    scores, weights, normal = [], [], []
    n_regions = 0
    for m, g in zip(maps_l, masks_l):
        m = np.asarray(m, dtype=np.float64)
        g = np.asarray(g).astype(bool)
        if m.shape != g.shape:
            raise ValueError(f"map shape {m.shape} differs from mask shape {g.shape}")
        structure = np.ones((3,) * g.ndim, dtype=bool)
        lab, n = ndimage.label(g, structure=structure)
        size = np.bincount(lab.reshape(-1), minlength=n + 1).astype(np.float64)
        w = np.zeros(lab.size, dtype=np.float64)
        flat = lab.reshape(-1)
        w[flat > 0] = 1.0 / size[flat[flat > 0]]
        scores.append(m.reshape(-1))
        weights.append(w)
        normal.append(~g.reshape(-1))
        n_regions += n
    if n_regions == 0:
        raise ValueError("AUPRO needs at least one ground-truth region")
    s = np.concatenate(scores)
    w = np.concatenate(weights) / n_regions
    neg = np.concatenate(normal)
    n_neg = int(neg.sum())
    if n_neg == 0:
        raise ValueError("AUPRO needs normal pixels to measure false positives")
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    pro = np.cumsum(w[order])
    fpr = np.cumsum(neg[order]) / n_neg
    # keep the last position of each run of equal scores (a threshold admits all tied pixels at once)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def aupro(
    maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    max_fpr: float = 0.3,
) -> float:
    """Area under the PRO curve up to ``max_fpr``, divided by ``max_fpr`` (1 = perfect, MVTec convention)."""
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(maps, masks)
    keep = fpr <= max_fpr
    x, y = fpr[keep], pro[keep]
    if x[-1] < max_fpr:  # interpolate the curve at exactly max_fpr
        j = int(np.searchsorted(fpr, max_fpr))
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0) if x1 > x0 else y1
        x, y = np.r_[x, max_fpr], np.r_[y, y_end]
    return float(np.trapz(y, x) / max_fpr)


def spearman(scores: Sequence[float], grades: Sequence[float]) -> float:
    """Spearman rank correlation between scores and ordinal grades (e.g. KL 0-4)."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(grades, dtype=np.float64)
    if s.size != g.size or s.size < 3:
        raise ValueError(f"Spearman needs >= 3 paired values, got {s.size} scores and {g.size} grades")
    return float(stats.spearmanr(s, g).statistic)
