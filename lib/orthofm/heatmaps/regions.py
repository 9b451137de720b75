"""Top regions of a heatmap: connected components above a threshold, with pixel and LPS boxes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..io.geometry import affine_lps, full_geometry

__all__ = ["Region", "find_regions"]


@dataclass
class Region:
    """One suspicious region. Indices are in array axis order ((row, col) or (slice, row, col)),
    inclusive; LPS coordinates in mm use the input's geometry (ITK defaults where the file had none)."""

    rank: int
    peak: float
    mean: float
    n_pixels: int
    bbox_min_index: list[int]
    bbox_max_index: list[int]
    peak_index: list[int]
    bbox_min_lps: list[float]
    bbox_max_lps: list[float]
    peak_lps: list[float]
    size_mm: list[float] | None  # physical extent of the box per array axis (None: spacing unknown)

    def to_dict(self) -> dict:
        return asdict(self)


def find_regions(
    heatmap: np.ndarray,
    threshold: float,
    *,
    spacing: tuple[float, ...] | None = None,
    origin: tuple[float, float, float] | None = None,
    direction: np.ndarray | None = None,
    min_pixels: int = 1,
    max_regions: int = 5,
    spacing_known: bool = True,
) -> list[Region]:
    """Connected components (full connectivity) of ``heatmap >= threshold``, strongest peak first.

    Pass the geometry the heatmap is written with (``orthofm.io.writers.record_geometry``) so LPS boxes
    match what a viewer shows; ``spacing_known=False`` leaves ``size_mm`` empty (a PNG has no mm).
    """
    arr = np.asarray(heatmap, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"heatmap must be 2D or 3D, got shape {arr.shape}")
    sp3, o3, d3 = full_geometry(arr.shape, spacing, origin, direction)
    affine = affine_lps(sp3, o3, d3)
    above = arr >= threshold
    crop = _bounding_box(above)
    if crop is None:
        return []
    # label only the box that holds above-threshold pixels: the same components, far fewer pixels on a large
    # radiograph whose abnormal area is small (scipy's label dominated the heatmap's fixed cost there)
    offset = np.array([s.start for s in crop])
    sub = arr[crop]
    lab, n = ndimage.label(above[crop], structure=np.ones((3,) * arr.ndim, dtype=bool))
    # statistics over the above-threshold voxels only (scipy's per-label helpers sort the whole array)
    where = np.flatnonzero(lab)
    ids = lab.reshape(-1)[where]
    vals = sub.reshape(-1)[where]
    sizes = np.bincount(ids, minlength=n + 1)[1:]
    means = np.bincount(ids, weights=vals, minlength=n + 1)[1:] / np.maximum(sizes, 1)
    order_in = np.lexsort((vals, ids))  # by label, then value: the last entry of each label is its peak
    last = order_in[np.r_[np.flatnonzero(np.diff(ids[order_in])), ids.size - 1]]
    peaks = vals[last]
    peak_pos = [tuple(int(v) for v in np.unravel_index(where[j], sub.shape) + offset) for j in last]
    slices = ndimage.find_objects(lab)
    order = [i for i in np.argsort(-peaks, kind="stable") if sizes[i] >= min_pixels][:max_regions]

    def to_lps(index: np.ndarray) -> np.ndarray:
        ijk = np.asarray(index, dtype=float)
        if arr.ndim == 2:
            ijk = np.r_[0.0, ijk]
        return (affine @ np.r_[ijk, 1.0])[:3]

    out = []
    for rank, i in enumerate(order):
        sl = slices[i]
        lo = np.array([s.start for s in sl]) + offset
        hi = np.array([s.stop - 1 for s in sl]) + offset
        corners = np.array(
            [
                to_lps(np.where(bits, hi, lo))
                for bits in np.array(np.meshgrid(*[[0, 1]] * arr.ndim, indexing="ij"))
                .reshape(arr.ndim, -1)
                .T.astype(bool)
            ]
        )
        step = sp3[-arr.ndim :]
        out.append(
            Region(
                rank=rank,
                peak=float(peaks[i]),
                mean=float(means[i]),
                n_pixels=int(sizes[i]),
                bbox_min_index=[int(v) for v in lo],
                bbox_max_index=[int(v) for v in hi],
                peak_index=[int(v) for v in peak_pos[i]],
                bbox_min_lps=[float(v) for v in corners.min(axis=0)],
                bbox_max_lps=[float(v) for v in corners.max(axis=0)],
                peak_lps=[float(v) for v in to_lps(np.asarray(peak_pos[i]))],
                size_mm=[float(v) for v in (hi - lo + 1) * step] if spacing_known else None,
            )
        )
    return out


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True pixel; None when there is none."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)
