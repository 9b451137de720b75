"""NIfTI and NRRD volumes -> ImageRecord in the package convention (array order, LPS geometry).

NIfTI stores RAS and NRRD may store RAS or LPS: both are converted to LPS so every record compares
with DICOM-derived ones directly. The header's size is checked before the voxels are loaded.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np

from .errors import DEFAULT_MAX_PIXELS, ImageReadError, check_dims, check_finite
from .geometry import LPS_TO_RAS
from .record import ImageRecord

_LPS_NAMES = {"left-posterior-superior", "lps"}
_RAS_NAMES = {"right-anterior-superior", "ras"}


def _squeeze_trailing(shape: tuple[int, ...], source: object) -> int:
    """Number of spatial dims after dropping trailing singleton axes beyond 3 (NIfTI t=1)."""
    ndim = len(shape)
    while ndim > 3 and shape[ndim - 1] == 1:
        ndim -= 1
    if ndim > 3:
        raise ImageReadError(f"{source}: not a scalar 2D/3D image: {len(shape)}D data of shape {shape}")
    if ndim < 2:
        raise ImageReadError(f"{source}: not an image: {ndim}D data of shape {shape}")
    return ndim


def _geometry_from_columns(
    cols: np.ndarray, origin: np.ndarray, source: object
) -> tuple[tuple[float, ...], np.ndarray]:
    """(spacing, direction) from a 3xN matrix of LPS step vectors per array axis."""
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)) or not np.all(np.isfinite(origin)):
        raise ImageReadError(f"{source}: degenerate geometry (zero or non-finite spacing/origin)")
    direction = cols / spacing[None, :]
    if direction.shape[1] == 2:  # 2D image in 3D space: add the plane normal
        normal = np.cross(direction[:, 1], direction[:, 0])
        direction = np.column_stack([direction, normal / max(np.linalg.norm(normal), 1e-12)])
    return tuple(float(s) for s in spacing), direction


def read_nifti(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageRecord:
    source = str(path)
    try:
        img = nib.load(source)
    except Exception as exc:
        raise ImageReadError(f"{source}: not an image: unreadable NIfTI ({exc})") from exc
    shape = tuple(int(s) for s in img.shape)
    ndim = _squeeze_trailing(shape, source)
    check_dims(shape[:ndim], max_pixels, source)
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape[:ndim])
    check_finite(data, source)
    affine = np.asarray(img.affine, dtype=float)
    lps = LPS_TO_RAS @ affine[:3, :3]  # the same flip maps RAS to LPS
    origin = LPS_TO_RAS @ affine[:3, 3]
    array = np.ascontiguousarray(data.transpose(tuple(range(ndim))[::-1]))  # (i,j,k) -> (k,j,i)
    cols = lps[:, :ndim][:, ::-1]
    spacing, direction = _geometry_from_columns(cols, origin, source)
    return ImageRecord(
        array=array,
        spacing=spacing,
        origin=tuple(float(v) for v in origin),
        direction=direction,
        modality=None,
        source=source,
        metadata={"format": "NIfTI", "qform_code": int(img.header["qform_code"]),
                  "sform_code": int(img.header["sform_code"]), "spacing_source": "affine"},
    )


def read_nrrd(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageRecord:
    source = str(path)
    try:
        header = nrrd.read_header(source)
    except Exception as exc:
        raise ImageReadError(f"{source}: not an image: unreadable NRRD header ({exc})") from exc
    sizes = tuple(int(s) for s in header.get("sizes", ()))
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * len(sizes))]
    spatial = [i for i, k in enumerate(kinds) if k in ("domain", "space")] or list(range(len(sizes)))
    non_spatial = [i for i in range(len(sizes)) if i not in spatial]
    if any(sizes[i] != 1 for i in non_spatial):
        raise ImageReadError(
            f"{source}: not a scalar image: NRRD has a non-spatial axis of size "
            f"{[sizes[i] for i in non_spatial]} (multi-layer segmentation or vector image)"
        )
    if not 2 <= len(spatial) <= 3:
        raise ImageReadError(f"{source}: not a 2D/3D image: {len(spatial)} spatial axes, sizes {sizes}")
    check_dims(tuple(sizes[i] for i in spatial), max_pixels, source)
    try:
        data, header = nrrd.read(source, index_order="F")
    except Exception as exc:
        raise ImageReadError(f"{source}: NRRD data could not be decoded ({exc})") from exc
    data = np.asarray(data).reshape(tuple(sizes[i] for i in spatial), order="F")
    array = np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(tuple(range(len(spatial)))[::-1]))
    check_finite(array, source)
    space = str(header.get("space", "")).lower()
    meta = {"format": "NRRD", "space": space or None, "nrrd_type": str(header.get("type"))}
    if "space directions" in header and space:
        dirs = np.asarray(header["space directions"], dtype=float)
        dirs = dirs[[i for i in range(dirs.shape[0]) if np.all(np.isfinite(dirs[i]))]]
        origin = np.asarray(header.get("space origin", np.zeros(dirs.shape[1])), dtype=float)
        if dirs.shape[1] == 2:  # 2D space: embed in 3D with z = 0
            dirs = np.column_stack([dirs, np.zeros(len(dirs))])
            origin = np.append(origin, 0.0)
        if space in _RAS_NAMES or space.startswith("right-anterior"):
            dirs, origin = dirs @ LPS_TO_RAS, LPS_TO_RAS @ origin
        elif space not in _LPS_NAMES and not space.startswith("left-posterior"):
            raise ImageReadError(f"{source}: unsupported NRRD space {space!r} (need LPS or RAS)")
        cols = dirs.T[:, ::-1]
        spacing, direction = _geometry_from_columns(cols, origin, source)
        return ImageRecord(array=array, spacing=spacing, origin=tuple(float(v) for v in origin),
                           direction=direction, source=source, metadata=meta | {"spacing_source": "space directions"})
    spacings = header.get("spacings")
    spacing = None
    if spacings is not None:
        spacing = tuple(float(s) for i, s in enumerate(spacings) if i in spatial)[::-1]
    return ImageRecord(array=array, spacing=spacing, source=source,
                       metadata=meta | {"spacing_source": "spacings" if spacing else None})
