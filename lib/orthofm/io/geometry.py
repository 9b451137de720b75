"""Geometry conventions shared by readers and writers.

Arrays are (H, W) or (D, H, W) in row-major image order. ``spacing[a]`` is the mm step along array
axis ``a``; ``direction[:, a]`` is the LPS (DICOM patient) unit vector of increasing index along
axis ``a``; ``origin`` is the LPS position of index 0. So the LPS position of index ``idx`` is
``origin + direction @ (spacing * idx)``. ITK/NRRD/Slicer order axes fastest-first (column, row,
slice): converting is a reversal of the axis order, nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: 2D images with no orientation in the header: what ITK (hence Slicer) assigns to a PNG/CR, i.e.
#: columns along +x (L), rows along +y (P), normal +z (S).
DEFAULT_DIRECTION_2D = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def direction_2d_from_iop(iop: Sequence[float]) -> np.ndarray:
    """2D direction: columns = row axis (down: DICOM column cosines), column axis (row cosines), normal."""
    row_cos = np.asarray(iop[:3], dtype=float)
    col_cos = np.asarray(iop[3:6], dtype=float)
    row_cos /= np.linalg.norm(row_cos)
    col_cos /= np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    return np.stack([col_cos, row_cos, normal], axis=1)


def direction_3d_from_iop(iop: Sequence[float]) -> np.ndarray:
    """3D (D,H,W) direction: columns = slice normal, column cosines (down rows), row cosines."""
    d2 = direction_2d_from_iop(iop)
    return d2[:, [2, 0, 1]]


def full_geometry(
    shape: Sequence[int],
    spacing: Sequence[float] | None,
    origin: Sequence[float] | None,
    direction: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3D (spacing, origin, direction) in array order for a 2D or 3D record, filling unknowns as ITK does.

    A 2D (H, W) image becomes a single-slice (1, H, W) volume: slice spacing 1 mm along the normal.
    Unknown spacing is 1 mm, unknown origin 0, unknown direction the ITK default (what Slicer shows
    when it loads the same PNG or un-positioned DICOM).
    """
    if len(shape) == 2:
        sp = np.array([1.0, *(spacing if spacing is not None else (1.0, 1.0))], dtype=float)
        d = np.asarray(direction, dtype=float) if direction is not None else DEFAULT_DIRECTION_2D
        d3 = d[:, [2, 0, 1]]
    elif len(shape) == 3:
        sp = np.array(spacing if spacing is not None else (1.0, 1.0, 1.0), dtype=float)
        d3 = (
            np.asarray(direction, dtype=float)
            if direction is not None
            else DEFAULT_DIRECTION_2D[:, [2, 0, 1]]
        )
    else:
        raise ValueError(f"expected a 2D or 3D array shape, got {tuple(shape)}")
    o = np.asarray(origin if origin is not None else (0.0, 0.0, 0.0), dtype=float)
    return sp, o, d3


def affine_lps(spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray) -> np.ndarray:
    """4x4 matrix mapping array-order indices (k, j, i) of a 3D array to LPS mm."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(direction, dtype=float) * np.asarray(spacing, dtype=float)[None, :]
    aff[:3, 3] = np.asarray(origin, dtype=float)
    return aff


def to_itk_order(spacing: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(spacing, direction) with axes reversed: fastest axis first, as ITK/NRRD/NIfTI store them."""
    return np.asarray(spacing)[::-1].copy(), np.asarray(direction)[:, ::-1].copy()


def from_itk_order(spacing: Sequence[float], direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(spacing, dtype=float)[::-1].copy(), np.asarray(direction, dtype=float)[:, ::-1].copy()


def orthonormal(direction: np.ndarray, atol: float = 1e-3) -> bool:
    d = np.asarray(direction, dtype=float)
    return bool(np.allclose(d.T @ d, np.eye(d.shape[1]), atol=atol))
