"""Temperature scaling: one scalar T so that softmax(logits / T) is calibrated on held-out labels.

One parameter cannot overfit a small held-out set the way vector or matrix scaling can, and it keeps the
arg-max (the predicted grade) unchanged, so calibration never trades accuracy for reliability.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = ["Calibration", "fit_temperature", "softmax"]

MIN_CALIBRATION_SAMPLES = 10


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


@dataclass
class Calibration:
    """Fitted temperature and the held-out NLL before/after (``n`` held-out samples; T=1 when too few)."""

    temperature: float = 1.0
    n: int = 0
    nll_before: float | None = None
    nll_after: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def fit_temperature(logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> Calibration:
    """Minimise held-out NLL over T in ``bounds`` (searching log T); T = 1 with a note if the set is too small."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) < MIN_CALIBRATION_SAMPLES or len(np.unique(y)) < 2:
        return Calibration(n=len(y), note=f"not calibrated: {len(y)} held-out samples, "
                           f"{len(np.unique(y))} classes (need >= {MIN_CALIBRATION_SAMPLES} and >= 2)")
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda t: _nll(logits, y, float(np.exp(t))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    temperature = float(np.exp(res.x))
    return Calibration(temperature=temperature, n=len(y), nll_before=_nll(logits, y, 1.0),
                       nll_after=_nll(logits, y, temperature))
