"""MRI helpers: slice selection, 2.5D neighbour stacks, and slice-wise preparation whose outputs
return to the original volume grid (so a per-slice heatmap is written on the MRI's geometry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .prepare import (
    DEFAULT_PERCENTILES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreparedImage,
    prepare_stack,
    robust_range,
)
from .record import ImageRecord


def slice_indices(depth: int, *, max_slices: int | None = None, center_fraction: float = 1.0) -> np.ndarray:
    """Evenly spaced slice indices within the central ``center_fraction`` of the stack.

    Edge slices of a knee MRI slab are mostly wrap-around and fat; ``center_fraction=0.6`` keeps the joint.
    """
    if depth <= 0:
        raise ValueError("depth must be positive")
    if not 0.0 < center_fraction <= 1.0:
        raise ValueError("center_fraction must be in (0, 1]")
    keep = max(1, round(depth * center_fraction))
    start = (depth - keep) // 2
    idx = np.arange(start, start + keep)
    if max_slices is not None and max_slices < keep:
        idx = idx[np.round(np.linspace(0, keep - 1, max_slices)).astype(int)]
    return np.unique(idx)


def stack_2p5d(volume: np.ndarray, index: int, context: int = 1) -> np.ndarray:
    """(2*context+1, H, W) slices around ``index`` (edges repeat the border slice): a 2.5D input."""
    depth = volume.shape[0]
    idx = np.clip(np.arange(index - context, index + context + 1), 0, depth - 1)
    return volume[idx]


@dataclass
class PreparedVolume:
    """Per-slice model inputs plus the volume grid their outputs return to."""

    slices: list[PreparedImage]
    indices: np.ndarray  # slice index (along ``axis``) of each prepared slice
    shape: tuple[int, int, int]  # original (D, H, W)
    axis: int  # array axis the slices were taken along
    spacing: tuple[float, ...] | None
    origin: tuple[float, float, float] | None
    direction: np.ndarray | None
    value_range: tuple[float, float]

    def tensors(self):
        """(N, C, S, S) batch of all prepared slices."""
        import torch

        return torch.stack([s.tensor for s in self.slices])

    def to_volume(
        self, maps: Sequence[np.ndarray] | np.ndarray, order: int = 1, fill: float = 0.0, interpolate: bool = False
    ) -> np.ndarray:
        """Slice-wise model-resolution maps -> a (D, H, W) array on the original volume grid.

        Slices not prepared get ``fill``, or with ``interpolate=True`` the linear (order 1) or nearest
        (order 0) blend of the nearest prepared slices along ``axis``.
        """
        if len(maps) != len(self.slices):
            raise ValueError(f"{len(maps)} maps for {len(self.slices)} prepared slices")
        moved = tuple(np.moveaxis(np.empty(self.shape, dtype=np.uint8), self.axis, 0).shape)
        planes = [s.to_original(np.asarray(m), order=order) for s, m in zip(self.slices, maps)]
        dtype = planes[0].dtype if order == 0 else np.float32
        out = np.full(moved, fill, dtype=dtype)
        idx = np.asarray(self.indices)
        for i, plane in zip(idx, planes):
            out[i] = plane
        if interpolate and len(idx) > 1:
            for d in range(moved[0]):
                if d in idx or d < idx[0] or d > idx[-1]:
                    continue
                hi = int(np.searchsorted(idx, d))
                a, b = idx[hi - 1], idx[hi]
                t = (d - a) / (b - a)
                if order == 0:
                    out[d] = out[a] if t < 0.5 else out[b]
                else:
                    out[d] = (1 - t) * out[a] + t * out[b]
        return np.moveaxis(out, 0, self.axis)


def prepare_volume_slices(
    volume: ImageRecord | np.ndarray,
    *,
    size: int | tuple[int, int] = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    indices: Sequence[int] | None = None,
    max_slices: int | None = None,
    center_fraction: float = 1.0,
    context: int = 0,
    axis: int = 0,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> PreparedVolume:
    """Prepare slices of a (D, H, W) volume for a 2D model, with one intensity range for the volume.

    ``context=1`` gives 2.5D inputs (neighbour slices as the 3 channels); ``axis`` picks the slicing
    axis (reformats keep physical aspect through the record's spacing).
    """
    record = volume if isinstance(volume, ImageRecord) else None
    array = np.asarray(record.array if record is not None else volume)
    if array.ndim != 3:
        raise ValueError(f"prepare_volume_slices needs a (D, H, W) volume, got shape {array.shape}")
    spacing = record.spacing if record is not None else None
    moved = np.moveaxis(array, axis, 0)
    in_plane = None
    if spacing is not None:
        rest = [float(s) for k, s in enumerate(spacing) if k != axis]
        in_plane = (rest[0], rest[1])
    if indices is None:
        idx = slice_indices(moved.shape[0], max_slices=max_slices, center_fraction=center_fraction)
    else:
        idx = np.unique(np.asarray(indices, dtype=int))
        if idx.size == 0 or idx.min() < 0 or idx.max() >= moved.shape[0]:
            raise ValueError(f"slice indices out of range [0, {moved.shape[0]})")
    lo_hi = robust_range(array, percentiles)
    prepared = [
        prepare_stack(stack_2p5d(moved, int(i), context), size, mean, std, value_range=lo_hi, spacing=in_plane)
        for i in idx
    ]
    return PreparedVolume(
        slices=prepared,
        indices=idx,
        shape=tuple(array.shape),  # type: ignore[arg-type]
        axis=axis,
        spacing=spacing,
        origin=record.origin if record is not None else None,
        direction=record.direction if record is not None else None,
        value_range=lo_hi,
    )
