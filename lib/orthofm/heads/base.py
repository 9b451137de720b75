"""What every head on frozen features shares: fitting with its own model selection, logits, arrays.

A head chooses its hyper-parameters and produces out-of-sample logits for calibration using only the
training labels it is given (internal patient-grouped CV or a grouped held-out part), so no validation or
test image ever shapes it. Its state is a flat dict of numpy arrays plus JSON-able parameters, so saving
never needs pickle and a loaded head computes exactly the same numbers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = ["FeatureHead", "FitResult", "Standardizer", "balanced_class_weights", "expand_logits"]

MISSING_CLASS_LOGIT = -50.0  # a class absent from the training labels gets ~zero probability


@dataclass
class FitResult:
    """Out-of-sample logits (and their labels) for temperature scaling, plus what model selection chose."""

    logits: np.ndarray
    y: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """``n / (n_present * count_c)`` per class (0 for absent classes), the sklearn 'balanced' rule."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def expand_logits(partial: np.ndarray, present: np.ndarray, n_classes: int) -> np.ndarray:
    """Logits over the ``present`` classes -> all ``n_classes`` (absent classes get a very low logit)."""
    full = np.full((partial.shape[0], n_classes), MISSING_CLASS_LOGIT, dtype=np.float64)
    full[:, present] = partial
    return full


@dataclass
class Standardizer:
    """Per-feature z-scoring fitted on the training features (stored with the head)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        x = np.asarray(x, dtype=np.float64)
        return cls(mean=x.mean(axis=0).astype(np.float32), scale=np.maximum(x.std(axis=0), 1e-6).astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) / self.scale


class FeatureHead(ABC):
    """A classifier over (N, F) feature vectors with ``n_classes`` outputs."""

    kind: ClassVar[str]

    def __init__(self, n_classes: int, *, ordinal: bool = False) -> None:
        if n_classes < 2:
            raise ValueError(f"a classification head needs at least 2 classes, got {n_classes}")
        self.n_classes = int(n_classes)
        self.ordinal = bool(ordinal)

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, groups: list[str], *, seed: int = 0) -> FitResult:
        """Fit on (x, y); choose hyper-parameters inside; return out-of-sample logits for calibration."""

    @abstractmethod
    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, n_classes) uncalibrated logits (float64)."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """Everything learned, as named numpy arrays (saved to safetensors)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-able settings needed to rebuild the head from ``arrays()``."""

    @classmethod
    @abstractmethod
    def restore(cls, n_classes: int, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureHead:
        """Rebuild a fitted head from ``params()`` and ``arrays()``."""

    @staticmethod
    def check_xy(x: np.ndarray, y: np.ndarray, groups: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        if x.ndim != 2 or len(x) != len(y) or len(y) != len(groups):
            raise ValueError(f"features {x.shape}, labels {y.shape} and {len(groups)} groups do not match")
        if len(y) < 2:
            raise ValueError(f"need at least 2 labelled images to fit a head, got {len(y)}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf")
        return x, y
