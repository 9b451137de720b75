"""Tiling for large films: overlapping tiles at (near) native resolution, blended back exactly.

A 3000 px film shrunk to 224 px loses fine trabecular or fracture-line detail; tiles keep it. Every
tile is a :class:`PreparedImage` sharing one intensity range, so tile outputs are comparable, and
:meth:`TiledImage.to_original` blends their inverse-mapped maps with a ramp that favours tile centres.
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


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of ``tile`` px; the last tile ends at the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _ramp(n: int) -> np.ndarray:
    """Blending weight along one tile axis: highest in the centre, small but positive at the border."""
    x = (np.arange(n) + 0.5) / n
    return np.minimum(x, 1.0 - x) * 2.0 + 1e-3


@dataclass
class TiledImage:
    tiles: list[PreparedImage]
    boxes: list[tuple[int, int, int, int]]  # (row0, col0, row1, col1) in original pixels
    original_shape: tuple[int, int]
    value_range: tuple[float, float]

    def to_original(self, maps: Sequence[np.ndarray], order: int = 1) -> np.ndarray:
        """Per-tile maps (each covering its tile's model canvas) -> one (H, W) map on the original grid.

        ``order=1`` blends overlaps with centre-weighted averaging; ``order=0`` (labels) takes, per
        pixel, the tile whose centre is nearest.
        """
        if len(maps) != len(self.tiles):
            raise ValueError(f"{len(maps)} maps for {len(self.tiles)} tiles")
        h, w = self.original_shape
        weight_sum = np.zeros((h, w), dtype=np.float32)
        out: np.ndarray | None = None
        for tile, box, m in zip(self.tiles, self.boxes, maps):
            r0, c0, r1, c1 = box
            local = tile.to_original(m, order=order)
            wgt = np.outer(_ramp(r1 - r0), _ramp(c1 - c0)).astype(np.float32)
            if out is None:
                out = np.zeros((h, w), dtype=np.float32 if order else local.dtype)
            if order:
                out[r0:r1, c0:c1] += local * wgt
                weight_sum[r0:r1, c0:c1] += wgt
            else:
                better = wgt > weight_sum[r0:r1, c0:c1]
                out[r0:r1, c0:c1][better] = local[better]
                weight_sum[r0:r1, c0:c1] = np.maximum(weight_sum[r0:r1, c0:c1], wgt)
        assert out is not None
        if order:
            out /= np.maximum(weight_sum, 1e-12)
        return out


def prepare_tiles(
    array2d: np.ndarray,
    size: int = 224,
    *,
    tile: int = 448,
    overlap: float = 0.25,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    value_range: tuple[float, float] | None = None,
) -> TiledImage:
    """Cut a large (H, W) film into overlapping ``tile`` px tiles, each prepared at ``size`` px.

    ``tile / size`` sets the down-sampling per tile (448 -> 224: half resolution); the intensity
    range is the whole film's, so all tiles are scaled alike.
    """
    a = np.asarray(array2d)
    if a.ndim != 2:
        raise ValueError(f"prepare_tiles needs a (H, W) array, got shape {a.shape}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError("overlap must be in [0, 1)")
    lo_hi = value_range if value_range is not None else robust_range(a, percentiles)
    stride = max(1, round(tile * (1.0 - overlap)))
    h, w = a.shape
    tiles, boxes = [], []
    for r0 in tile_starts(h, tile, stride):
        for c0 in tile_starts(w, tile, stride):
            r1, c1 = min(h, r0 + tile), min(w, c0 + tile)
            tiles.append(prepare_stack(a[None, r0:r1, c0:c1], size, mean, std, value_range=lo_hi))
            boxes.append((r0, c0, r1, c1))
    return TiledImage(tiles, boxes, (h, w), lo_hi)
