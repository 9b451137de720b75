"""Logistic-regression probe on standardised frozen features (multinomial, class-balanced).

The regularisation strength C is chosen from a grid by patient-grouped K-fold cross-validation on the
training labels (out-of-fold log loss); the out-of-fold logits at the chosen C then calibrate the
temperature, so every training label is used both for fitting and for calibration without double dipping.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from orthofm.evaluate.splits import group_kfold

from .base import MISSING_CLASS_LOGIT, FeatureHead, FitResult, Standardizer, balanced_class_weights
from .calibration import softmax

__all__ = ["LogisticProbe"]

log = logging.getLogger(__name__)
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 1, 6))


def _fit_path(x: np.ndarray, y: np.ndarray, n_classes: int, cs: tuple[float, ...], balanced: bool,
              max_iter: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fit along ascending ``cs`` with warm starts; full-size (W (K,F), b (K,)) per C.

    Classes absent from ``y`` get a zero weight row and a very low bias.
    """
    present = np.unique(y)
    out = []
    if len(present) == 1:
        w = np.zeros((n_classes, x.shape[1]))
        b = np.full(n_classes, MISSING_CLASS_LOGIT)
        b[present[0]] = 0.0
        return [(w, b)] * len(cs)
    weights = balanced_class_weights(y, n_classes) if balanced else np.ones(n_classes)
    model = LogisticRegression(class_weight={int(k): float(weights[k]) for k in present}, max_iter=max_iter,
                               tol=1e-4, warm_start=True)
    xd = np.ascontiguousarray(x, dtype=np.float64)
    # one BLAS thread: these problems are small, and threaded BLAS on a busy CPU is ~20x slower (measured);
    # one limiter for the whole path, because each threadpool_limits() call re-reads /proc/self/maps
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in cs:  # ascending C: each solution starts from the more regularised one
            model.set_params(C=c)
            model.fit(xd, y)
            out.append(_full_size(model, present, n_classes, x.shape[1]))
    return out


def row_space(x: np.ndarray, rel_tol: float = 1e-7) -> np.ndarray | None:
    """An orthonormal basis (F, r) of the span of ``x``'s rows when there are more features than rows, else None.

    An L2-regularised linear model's weights lie in the span of its training rows, so fitting on ``x @ basis``
    (r <= N columns) and mapping the weights back with ``basis.T`` gives the same model as fitting on ``x``: this
    makes a probe on wide features (e.g. a 7x7 grid of patch tokens: 19k dims for 3k images) fit in about 10 min
    where the plain fit took more than 24 (one shared core; observed, not benchmarked).
    Directions with a singular value below ``rel_tol`` of the largest carry no variance and are dropped.
    """
    n, f = x.shape
    if f <= n:
        return None
    xd = np.asarray(x, dtype=np.float64)
    eigvals, u = np.linalg.eigh(xd @ xd.T)  # Gram matrix: N x N, cheaper than an SVD of N x F
    keep = eigvals > eigvals.max() * rel_tol**2
    sv = np.sqrt(eigvals[keep])
    return (xd.T @ u[:, keep]) / sv  # right singular vectors


def _full_size(model: LogisticRegression, present: np.ndarray, n_classes: int,
               n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's coefficients for the classes present -> (W (K,F), b (K,)) over all ``n_classes``."""
    w = np.zeros((n_classes, n_features))
    b = np.full(n_classes, MISSING_CLASS_LOGIT)
    if len(present) == 2:  # sklearn keeps one vector for binary: logit(p1) = x.w + b
        w[present[1]] = model.coef_[0]
        b[present[1]] = model.intercept_[0]
        b[present[0]] = 0.0
    else:
        w[present] = model.coef_
        b[present] = model.intercept_
    return w, b


class LogisticProbe(FeatureHead):
    """Multinomial logistic regression; ``cs`` grid, ``folds``-fold grouped CV, optional class balancing."""

    kind = "probe"

    def __init__(self, n_classes: int, *, ordinal: bool = False, cs: tuple[float, ...] = DEFAULT_CS,
                 folds: int = 5, balanced: bool = True, max_iter: int = 500) -> None:
        super().__init__(n_classes, ordinal=ordinal)
        self.cs = tuple(sorted(float(c) for c in cs))
        self.folds = int(folds)
        self.balanced = bool(balanced)
        self.max_iter = int(max_iter)
        self.c: float | None = None
        self.scaler: Standardizer | None = None
        self.w: np.ndarray | None = None
        self.b: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, groups: list[str], *, seed: int = 0) -> FitResult:
        x, y = self.check_xy(x, y, groups)
        self.scaler = Standardizer.fit(x)
        xs = self.scaler(x)
        basis = row_space(xs)
        if basis is not None:  # wide features: the same fit in the span of the rows (see row_space)
            xs = xs.astype(np.float64) @ basis
        info: dict[str, Any] = {"cs": list(self.cs)}
        if len(set(groups)) >= 3 and len(self.cs) > 1:
            folds = group_kfold(y, groups, self.folds, seed)
            oof = {c: np.zeros((len(y), self.n_classes)) for c in self.cs}
            for tr, va in folds:
                for c, (w, b) in zip(self.cs, _fit_path(xs[tr], y[tr], self.n_classes, self.cs, self.balanced,
                                                        self.max_iter)):
                    oof[c][va] = xs[va] @ w.T + b
            losses = {c: float(-np.mean(np.log(np.clip(softmax(z)[np.arange(len(y)), y], 1e-12, 1))))
                      for c, z in oof.items()}
            self.c = min(self.cs, key=lambda c: (losses[c], -c))
            info.update(cv_folds=len(folds), cv_log_loss={str(c): v for c, v in losses.items()})
            calib = FitResult(logits=oof[self.c], y=y)
        else:
            self.c = self.cs[len(self.cs) // 2]
            info["note"] = "too few patients for cross-validation: middle of the C grid, no calibration"
            calib = FitResult(logits=np.zeros((0, self.n_classes)), y=np.zeros(0, dtype=np.int64))
        path = tuple(c for c in self.cs if c <= self.c)
        self.w, self.b = _fit_path(xs, y, self.n_classes, path, self.balanced, self.max_iter)[-1]
        if basis is not None:
            self.w = self.w @ basis.T
            info["row_space_dims"] = int(basis.shape[1])
        self.w, self.b = self.w.astype(np.float32), self.b.astype(np.float32)
        info["C"] = self.c
        log.info("probe: C=%g (grid %s, %s folds)", self.c, list(self.cs), info.get("cv_folds", "no"))
        calib.info = info
        return calib

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.w is None or self.scaler is None:
            raise RuntimeError("the probe is not fitted")
        return self.scaler(x).astype(np.float64) @ self.w.T.astype(np.float64) + self.b.astype(np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.scaler.mean, "scale": self.scaler.scale, "weight": self.w, "bias": self.b}

    def params(self) -> dict[str, Any]:
        return {"C": self.c, "cs": list(self.cs), "folds": self.folds, "balanced": self.balanced,
                "max_iter": self.max_iter}

    @classmethod
    def restore(cls, n_classes: int, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> LogisticProbe:
        head = cls(n_classes, cs=tuple(params["cs"]), folds=params["folds"], balanced=params["balanced"],
                   max_iter=params["max_iter"])
        head.c = params["C"]
        head.scaler = Standardizer(mean=arrays["mean"], scale=arrays["scale"])
        head.w, head.b = arrays["weight"], arrays["bias"]
        return head

