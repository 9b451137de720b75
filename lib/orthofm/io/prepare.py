"""Reversible model-input preparation for 2D images.

Forward: percentile robust scaling to [0, 1] -> aspect-preserving resize (half-pixel-centre convention,
antialiased) -> centred pad to the model canvas -> 3-channel ImageNet-style normalisation.
Inverse (:meth:`PreparedImage.to_original`): any map covering the model canvas (a (h, w) patch map or an
(S, S) label map) is sampled back at the original pixel centres with the exact inverse coordinate map
(separable bilinear or nearest), so a heatmap lands on the pixel it was computed for (sub-pixel error,
tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_PERCENTILES = (0.5, 99.5)
_PERCENTILE_SAMPLES = 1_000_000  # strided subsample: deterministic, and plenty for a 0.5 % tail
_SELECT_BINS = 4096  # histogram bins for exact order statistics (robust_range)


def robust_range(array: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[float, float]:
    """Percentile range of the finite values (a strided subsample for big arrays: deterministic).

    The same numbers as ``np.percentile`` on the same samples (tested), found by counting instead of sorting:
    on a 3 MP film sorting was the largest fixed cost of a heatmap after the forward pass.
    """
    flat = np.asarray(array).ravel()
    if flat.size > _PERCENTILE_SAMPLES:
        flat = flat[:: int(np.ceil(flat.size / _PERCENTILE_SAMPLES))]
    flat = np.ascontiguousarray(flat, dtype=np.float32)  # one strided read; every later pass reads 1/stride
    finite = np.isfinite(flat)
    if not finite.all():
        flat = flat[finite]
    if flat.size == 0:
        return 0.0, 1.0
    lo, hi = percentiles_by_counting(flat, percentiles)
    return float(lo), float(hi)


def percentiles_by_counting(flat: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """``np.percentile(flat, percentiles)`` (its default linear method, float64 results) for a finite 1-D float32
    array: the order statistics it interpolates are found with a histogram and a sort of one bin each."""
    n = flat.size
    virtual = (n - 1) * np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    below = np.clip(np.floor(virtual), 0, n - 1)
    above = np.minimum(below + 1, n - 1)
    ranks = np.unique(np.concatenate([below, above]).astype(np.int64))
    values = dict(zip(ranks.tolist(), _order_statistics(flat, ranks).tolist()))
    a = np.array([values[int(k)] for k in below], dtype=flat.dtype)
    b = np.array([values[int(k)] for k in above], dtype=flat.dtype)
    gamma = virtual - below
    diff = np.subtract(b, a)  # the same arithmetic as numpy's _lerp, so the same float64 results
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return out


def _order_statistics(flat: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The values at sorted positions ``ranks`` of ``flat`` (exact). Binning by a monotone map keeps every
    bin's values above all lower bins', so rank k is found by counting, then sorting only its bin."""
    low, high = flat.min(), flat.max()
    if not high > low:
        return np.full(len(ranks), low, dtype=flat.dtype)
    n = flat.size
    bins = np.subtract(flat, low)
    bins *= np.float32(_SELECT_BINS / (float(high) - float(low)))
    bins = bins.astype(np.int32)
    np.minimum(bins, _SELECT_BINS - 1, out=bins)  # monotone in the value (float rounding is)
    cumulative = np.cumsum(np.bincount(bins, minlength=_SELECT_BINS))
    out = np.empty(len(ranks), dtype=flat.dtype)
    members: dict[int, np.ndarray] = {}
    ties: dict[str, int] = {}
    for i, k in enumerate(ranks.tolist()):
        # a saturated film holds a third of its pixels at its maximum (or minimum): counted, not gathered
        if "high" not in ties and k >= cumulative[-2]:  # in the top bin
            ties["high"] = int(np.count_nonzero(flat == high))
        if "low" not in ties and k < cumulative[0]:  # in the bottom bin
            ties["low"] = int(np.count_nonzero(flat == low))
        if k >= n - ties.get("high", 0):
            out[i] = high
            continue
        if k < ties.get("low", 0):
            out[i] = low
            continue
        j = int(np.searchsorted(cumulative, k, side="right"))
        if j not in members:
            members[j] = flat[bins == j]
        inside, r = members[j], k - (int(cumulative[j - 1]) if j else 0)
        out[i] = np.partition(inside, r)[r]
    return out


def robust_scale(
    array: np.ndarray,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Map the [p_low, p_high] percentile range to [0, 1] and clip: robust to burnt-in text and markers."""
    lo, hi = value_range if value_range is not None else robust_range(array, percentiles)
    if hi <= lo:
        return np.zeros(np.shape(array), dtype=np.float32)
    out = np.subtract(array, np.float32(lo), dtype=np.float32)  # converts and shifts in one pass
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an (H, W) image sits on an (S_h, S_w) canvas: scale per axis and top-left padding."""

    original_shape: tuple[int, int]
    canvas_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    pad: tuple[int, int]

    @classmethod
    def fit(
        cls, shape: tuple[int, int], size: int | tuple[int, int], spacing: tuple[float, float] | None = None
    ) -> LetterboxGeometry:
        """Largest placement of an (H, W) image on the canvas preserving its aspect ratio.

        With ``spacing`` (mm per row, per column) the *physical* aspect is preserved, so anisotropic
        pixels (reformatted MRI planes) come out with square model pixels.
        """
        h, w = int(shape[0]), int(shape[1])
        sh, sw = _as_size(size)
        ph, pw = (float(h), float(w)) if spacing is None else (h * float(spacing[0]), w * float(spacing[1]))
        scale = min(sh / ph, sw / pw)
        rh = min(sh, max(1, round(ph * scale)))
        rw = min(sw, max(1, round(pw * scale)))
        return cls((h, w), (sh, sw), (rh, rw), ((sh - rh) // 2, (sw - rw) // 2))

    @property
    def scale(self) -> tuple[float, float]:
        """Canvas pixels per original pixel, per axis (after rounding the resized size)."""
        return (self.resized_shape[0] / self.original_shape[0], self.resized_shape[1] / self.original_shape[1])

    def to_canvas(self, points_rc: np.ndarray) -> np.ndarray:
        """Original (row, col) pixel coordinates -> canvas coordinates (pixel centres are integers)."""
        p = np.asarray(points_rc, dtype=np.float64)
        s = np.asarray(self.scale)
        return (p + 0.5) * s - 0.5 + np.asarray(self.pad, dtype=np.float64)

    def to_original(self, points_rc: np.ndarray) -> np.ndarray:
        """Canvas (row, col) coordinates -> original pixel coordinates (exact inverse of to_canvas)."""
        p = np.asarray(points_rc, dtype=np.float64)
        s = np.asarray(self.scale)
        return (p - np.asarray(self.pad, dtype=np.float64) + 0.5) / s - 0.5


def resize_2d(array: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Half-pixel-centre resize: antialiased bilinear (order 1) or nearest (order 0, for labels).

    Bilinear is ``torch``'s antialiased (triangle-filter) resample, Pillow's filter and convention: the two
    agree to 1e-5 relative (float rounding of the weights; tested). torch reads the array in place, where
    Pillow first copies it into an image of its own; on a 3 MP film torch is 2.4x faster
    (``io_resize_cr_1760_to_224`` in docs/benchmarks.md).
    """
    a = np.ascontiguousarray(array, dtype=np.float32)
    t = torch.from_numpy(a)[None, None]
    if order == 0:
        return F.interpolate(t, size=shape, mode="nearest-exact")[0, 0].numpy()
    out = F.interpolate(t, size=(int(shape[0]), int(shape[1])), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].numpy()


def _axis_samples(coords: np.ndarray, n: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output position along one axis: (lower cell, upper cell, weight of the upper cell).

    Coordinates outside [0, n-1] are clamped (edge values extend, as scipy's ``mode='nearest'``);
    ``order=0`` rounds half up and gives weight 0 (nearest cell).
    """
    c = np.clip(coords, 0.0, n - 1)
    if order == 0:
        i0 = np.minimum(np.floor(c + 0.5).astype(np.intp), n - 1)
        return i0, i0, np.zeros(len(c), dtype=np.float32)
    i0 = np.minimum(np.floor(c).astype(np.intp), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (c - i0).astype(np.float32)


def sample_canvas_map(
    map_hw: np.ndarray, geometry: LetterboxGeometry, order: int = 1, rows=None, cols=None
) -> np.ndarray:
    """Sample a map covering the canvas at the original pixel centres ((..., h, w) -> (..., H, W)).

    Both samplings are separable: bilinear is two sparse interpolation matrices (two weights per
    output row/column) applied to the small map, nearest two 1D gathers, so a 1760 px film costs
    one pass over the output instead of a 2D spline evaluation per pixel (scipy's
    ``map_coordinates``; same values to float32 rounding, tested against it).
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (bilinear), got {order}")
    m = np.asarray(map_hw)
    if m.ndim < 2:
        raise ValueError(f"map must be (h, w) or (C, h, w), got shape {m.shape}")
    mh, mw = m.shape[-2:]
    sh, sw = geometry.canvas_shape
    h, w = geometry.original_shape
    rows = np.arange(h, dtype=np.float64) if rows is None else np.asarray(rows, dtype=np.float64)
    cols = np.arange(w, dtype=np.float64) if cols is None else np.asarray(cols, dtype=np.float64)
    canvas_r = geometry.to_canvas(np.stack([rows, np.zeros_like(rows)], 1))[:, 0]
    canvas_c = geometry.to_canvas(np.stack([np.zeros_like(cols), cols], 1))[:, 1]
    # canvas pixel coordinates -> map cell coordinates (the map tiles the canvas evenly)
    r0, r1, fr = _axis_samples((canvas_r + 0.5) * (mh / sh) - 0.5, mh, order)
    c0, c1, fc = _axis_samples((canvas_c + 0.5) * (mw / sw) - 0.5, mw, order)
    lead = m.shape[:-2]
    flat = m.reshape(-1, mh, mw)
    if order == 0:  # nearest: two 1D gathers, dtype kept (label maps)
        out = np.take(flat[:, r0], c0, axis=-1)
        return out.reshape(*lead, len(rows), len(cols))
    w_rows, w_cols = _weights(r0, r1, fr, mh), _weights(c0, c1, fc, mw)
    planes = [w_rows @ np.ascontiguousarray((w_cols @ plane.T).T) for plane in flat.astype(np.float32, copy=False)]
    out = planes[0][None] if len(planes) == 1 else np.stack(planes)  # no extra full-size copy for one map
    return out.reshape(*lead, len(rows), len(cols))


def _weights(i0: np.ndarray, i1: np.ndarray, frac: np.ndarray, n: int) -> sparse.csr_matrix:
    """(outputs x n) linear interpolation matrix with two weights per row (sparse: one pass to apply)."""
    k = len(i0)
    return sparse.csr_matrix(
        (np.stack([1.0 - frac, frac], 1).ravel(), np.stack([i0, i1], 1).ravel(), np.arange(0, 2 * k + 1, 2)),
        shape=(k, n), dtype=np.float32,
    )


@dataclass
class PreparedImage:
    """Model input plus everything needed to map model-resolution outputs back to the original grid."""

    tensor: torch.Tensor  # (3, S_h, S_w) float32, normalised
    geometry: LetterboxGeometry
    value_range: tuple[float, float]  # intensities mapped to 0 and 1 by robust scaling
    mask: np.ndarray  # (S_h, S_w) bool: True where the image is (False on padding)

    @property
    def original_shape(self) -> tuple[int, int]:
        return self.geometry.original_shape

    @property
    def size(self) -> tuple[int, int]:
        return self.geometry.canvas_shape

    def to_original(self, map_hw: np.ndarray, order: int = 1) -> np.ndarray:
        """A (h, w) or (C, h, w) map covering the model canvas -> (H, W) / (C, H, W) on the original grid.

        ``order=1`` (bilinear) for heatmaps/probabilities, ``order=0`` (nearest) for label maps.
        """
        return sample_canvas_map(map_hw, self.geometry, order=order)

    def to_model_coords(self, points_rc: np.ndarray) -> np.ndarray:
        return self.geometry.to_canvas(points_rc)

    def to_original_coords(self, points_rc: np.ndarray) -> np.ndarray:
        return self.geometry.to_original(points_rc)


def _normalise(canvas: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(C, S, S) canvas in [0, 1] -> normalised tensor with len(mean) channels (grey is repeated)."""
    n = len(mean)
    t = torch.from_numpy(canvas)
    if t.shape[0] == 1 and n != 1:
        t = t.expand(n, *t.shape[1:])
    elif t.shape[0] != n:
        raise ValueError(f"{t.shape[0]} image channels but {n} normalisation channels")
    m = torch.tensor(tuple(mean), dtype=torch.float32)[:, None, None]
    s = torch.tensor(tuple(std), dtype=torch.float32)[:, None, None]
    return ((t - m) / s).contiguous()


def letterbox(
    planes: np.ndarray,
    geometry: LetterboxGeometry,
    pad_value: float = 0.0,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) planes -> ((C, S_h, S_w) canvas in [0, 1], (S_h, S_w) image mask).

    ``value_range`` (lo, hi) is mapped to [0, 1] and clipped, the same as :func:`robust_scale` before the
    resize: the resize is linear with weights summing to one, so clipping to [lo, hi] at full resolution
    and scaling the small result gives the same canvas (to float32 rounding) with two passes fewer over a
    large film.
    """
    sh, sw = geometry.canvas_shape
    top, left = geometry.pad
    rh, rw = geometry.resized_shape
    lo, hi = float(value_range[0]), float(value_range[1])
    canvas = np.full((planes.shape[0], sh, sw), pad_value, dtype=np.float32)
    if hi > lo:
        clipped = np.empty(planes.shape[1:], dtype=np.float32)
        for c, plane in enumerate(planes):
            np.clip(plane, np.float32(lo), np.float32(hi), out=clipped, casting="unsafe")  # one pass, in float32
            small = np.subtract(resize_2d(clipped, geometry.resized_shape), np.float32(lo))
            small *= np.float32(1.0 / (hi - lo))
            np.clip(small, 0, 1, out=canvas[c, top : top + rh, left : left + rw])
    else:  # a constant image scales to 0, as robust_scale does
        canvas[:, top : top + rh, left : left + rw] = 0.0
    mask = np.zeros((sh, sw), dtype=bool)
    mask[top : top + rh, left : left + rw] = True
    return canvas, mask


def prepare_stack(
    planes: np.ndarray,
    size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    value_range: tuple[float, float],
    spacing: tuple[float, float] | None = None,
    pad_value: float = 0.0,
) -> PreparedImage:
    """Like :func:`prepare_2d` for (C, H, W) planes sharing one grid (2.5D MRI stacks, C = 1 or 3)."""
    p = np.asarray(planes)
    if p.ndim != 3:
        raise ValueError(f"prepare_stack needs (C, H, W) planes, got shape {p.shape}")
    geometry = LetterboxGeometry.fit(p.shape[1:], size, spacing)
    canvas, mask = letterbox(p, geometry, pad_value, value_range)
    return PreparedImage(_normalise(canvas, mean, std), geometry, value_range, mask)


def prepare_2d(
    array2d: np.ndarray,
    size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    value_range: tuple[float, float] | None = None,
    pad_value: float = 0.0,
    spacing: tuple[float, float] | None = None,
) -> PreparedImage:
    """Robust-scale, letterbox and normalise a (H, W) image for a ViT; keeps the inverse mapping.

    ``pad_value`` is in scaled [0, 1] units (0 = black). ``spacing`` (row, col mm) makes the
    letterbox preserve the physical aspect of non-square pixels; None treats pixels as square.
    """
    a = np.asarray(array2d)
    if a.ndim != 2:
        raise ValueError(f"prepare_2d needs a (H, W) array, got shape {a.shape}")
    lo_hi = value_range if value_range is not None else robust_range(a, percentiles)
    return prepare_stack(a[None], size, mean, std, value_range=lo_hi, spacing=spacing, pad_value=pad_value)
