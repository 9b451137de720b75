"""Image-level scores and the normal-reference calibration that makes maps comparable.

Raw map values have no fixed unit (cosine distance for patch kNN, squared pixel error for
reconstruction, and both depend on the backbone), so a bank also stores, per method, the map-value
quantiles and image scores of held-out normal images. From them: a normal-relative map scale (0 = the
normal median, 1 = the normal 99th percentile), region thresholds, and the rank of an image score among
normals, which is how two methods are combined ("rank-normalise and average").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["calibration_entry", "normal_rank", "normal_scale", "top_fraction_mean"]


def top_fraction_mean(
    patch_scores: np.ndarray, fraction: float = 0.01, valid: np.ndarray | None = None
) -> float:
    """Mean of the highest ``fraction`` of patch scores (at least one patch), AnomalyDINO's image score.

    ``valid`` (bool, same shape) excludes patches that lie in padding outside the image.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = np.asarray(patch_scores, dtype=np.float64)
    if valid is not None:
        values = values[np.asarray(valid, dtype=bool)]
    values = values.reshape(-1)
    if values.size == 0:
        raise ValueError("no patch scores to summarise")
    k = max(1, int(np.ceil(fraction * values.size)))
    return float(np.mean(np.partition(values, values.size - k)[-k:]))


def calibration_entry(map_values: Sequence[np.ndarray], image_scores: Sequence[float]) -> dict[str, Any]:
    """Normal-reference statistics of one method: 101 percentiles of its smoothed map values inside the
    image, and the sorted image scores."""
    flat = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in map_values])
    if flat.size == 0 or len(image_scores) == 0:
        raise ValueError("calibration needs at least one normal image")
    return {
        "map_quantiles": [float(v) for v in np.percentile(flat, np.arange(101))],
        "image_scores": sorted(float(v) for v in image_scores),
        "n_images": len(image_scores),
    }


def normal_scale(values: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Map values rescaled so the normal median is 0 and the normal 99th percentile is 1."""
    q = calibration["map_quantiles"]
    lo, hi = q[50], q[99]
    return (np.asarray(values, dtype=np.float32) - lo) / max(hi - lo, 1e-12)


def normal_rank(value: float, calibration: dict[str, Any]) -> float:
    """Where ``value`` falls among the normal image scores: 0..1 inside their range (empirical CDF,
    interpolated), continued linearly beyond it so very abnormal images keep their order."""
    ref = np.asarray(calibration["image_scores"], dtype=np.float64)
    if ref.size == 0:
        raise ValueError("calibration has no normal image scores")
    if ref.size == 1:
        return 0.5 + float(value - ref[0])
    span = max(ref[-1] - ref[0], 1e-12)
    if value < ref[0]:
        return float((value - ref[0]) / span)
    if value > ref[-1]:
        return float(1.0 + (value - ref[-1]) / span)
    return float(np.interp(value, ref, np.linspace(0.0, 1.0, ref.size)))
