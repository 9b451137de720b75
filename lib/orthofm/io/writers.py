"""Writers for results (label maps, heatmaps, Slicer segmentations) on the input's exact geometry.

Files are written in LPS with the record's spacing/origin/direction (2D results as single-slice 3D
volumes), so 3D Slicer overlays them on the image it loaded from the same source. Writes are atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np

from orthofm.utils.atomic import atomic_path

from .geometry import LPS_TO_RAS, affine_lps, full_geometry
from .record import ImageRecord

DEFAULT_COMPRESSION = 1  # gzip level for label maps: ~as small as level 9, 15x faster
# Float maps are written raw by default: deflate saves ~11 % on float32 (mantissa bytes look random) at
# ~20-100x the write time (24x512x512 MRI heatmap: seconds with gzip, ~0.1-0.3 s raw); see docs/io.md.


def nrrd_compression(dtype: np.dtype, compression_level: int | None) -> int:
    """gzip level to use: explicit ``compression_level``, else 0 (raw) for floats and 1 for labels."""
    if compression_level is not None:
        if not 0 <= int(compression_level) <= 9:
            raise ValueError(f"compression_level must be 0-9 or None, got {compression_level}")
        return int(compression_level)
    return 0 if np.dtype(dtype).kind == "f" else DEFAULT_COMPRESSION
_NRRD_TYPES = {
    np.dtype(np.uint8): "unsigned char", np.dtype(np.int8): "signed char",
    np.dtype(np.uint16): "unsigned short", np.dtype(np.int16): "short",
    np.dtype(np.uint32): "unsigned int", np.dtype(np.int32): "int",
    np.dtype(np.float32): "float", np.dtype(np.float64): "double",
}


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".seg.nrrd"):
        return "seg"
    if name.endswith(".nrrd"):
        return "nrrd"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    raise ValueError(f"{path}: unsupported output format (use .nrrd, .seg.nrrd, .nii or .nii.gz)")


def _as_output_dtype(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind in "iu":
        if a.dtype.itemsize > 4:
            if a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max:
                raise ValueError("label values do not fit in 32 bits")
            return a.astype(np.int32)
        return a
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    raise ValueError(f"cannot write arrays of dtype {a.dtype}")


def _as_3d(array: np.ndarray, spacing, origin, direction):
    a = np.asarray(array)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected a (H, W) or (D, H, W) array, got shape {a.shape}")
    sp, o, d = full_geometry(a.shape, spacing, origin, direction)
    return (a[None] if a.ndim == 2 else a), sp, o, d


def write_volume(
    array: np.ndarray,
    path: str | Path,
    *,
    spacing: Sequence[float] | None,
    origin: Sequence[float] | None = None,
    direction: np.ndarray | None = None,
    compression_level: int | None = None,
) -> Path:
    """Write a (H, W) or (D, H, W) float or label array as .nrrd or .nii/.nii.gz.

    Geometry follows the package convention (array-order spacing, LPS origin/direction); unknowns are
    filled as ITK does (spacing 1, origin 0, default direction). Integer/bool arrays stay integer.
    NRRD ``compression_level``: None = raw for float maps (gzip barely shrinks them and is slow),
    gzip level 1 for label maps; 0-9 forces raw (0) or that gzip level. Ignored for NIfTI.
    """
    path = Path(path)
    kind = _kind(path)
    vol, sp, o, d = _as_3d(_as_output_dtype(array), spacing, origin, direction)
    if kind == "nifti":
        aff = affine_lps(sp, o, d)
        ijk = np.eye(4)
        ijk[:3, :3] = aff[:3, :3][:, ::-1]  # array (k, j, i) -> file (i, j, k)
        ijk[:3, 3] = aff[:3, 3]
        ras = np.diag([*np.diag(LPS_TO_RAS), 1.0]) @ ijk
        img = nib.Nifti1Image(np.asarray(vol).transpose(2, 1, 0), ras)
        img.set_qform(ras, code=1)
        img.set_sform(ras, code=1)
        with atomic_path(path) as tmp:
            nib.save(img, str(tmp))
        return path
    if kind == "seg":
        raise ValueError(f"{path}: use write_seg_nrrd for .seg.nrrd files")
    level = nrrd_compression(vol.dtype, compression_level)
    header = nrrd_header(vol, sp, o, d, level)
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(vol), header, index_order="C", compression_level=max(level, 1))
    return path


def nrrd_header(vol: np.ndarray, sp, o, d, compression_level: int = DEFAULT_COMPRESSION) -> dict[str, Any]:
    """NRRD header in LPS; 'space directions' rows are file axes (fastest first: column, row, slice)."""
    steps = (np.asarray(d, dtype=float) * np.asarray(sp, dtype=float)[None, :]).T  # rows: array axes
    return {
        "type": _NRRD_TYPES[np.dtype(vol.dtype)],
        "dimension": 3,
        "space": "left-posterior-superior",
        "space directions": steps[::-1],
        "space origin": np.asarray(o, dtype=float),
        "kinds": ["domain", "domain", "domain"],
        "endian": "little",
        "encoding": "gzip" if compression_level > 0 else "raw",
    }


def record_geometry(record: ImageRecord, shape: tuple[int, ...] | None = None):
    """(spacing, origin, direction) to write results of ``record`` with: the grid a viewer displays.

    For 2D images whose calibrated spacing differs from what ITK/Slicer assign (Imager vs Pixel
    Spacing, unknown spacing), the viewer's grid (``metadata['source_spacing']``) wins: the overlay
    must land on the pixels the user sees.
    """
    shape = tuple(shape) if shape is not None else record.shape
    if shape != record.shape:
        raise ValueError(f"array shape {shape} does not match the record's image shape {record.shape}")
    spacing: Sequence[float] | None = record.spacing
    viewer = record.metadata.get("source_spacing")
    if len(shape) == 2 and viewer is not None:
        spacing = tuple(float(v) for v in viewer)
    elif len(shape) == 3 and spacing is None and record.metadata.get("pixel_spacing") is not None:
        spacing = (1.0, *record.metadata["pixel_spacing"])
    return spacing, record.origin, record.direction


def write_like(
    array: np.ndarray, record: ImageRecord, path: str | Path, *, compression_level: int | None = None
) -> Path:
    """Write a result with the same grid and geometry as ``record`` (2D -> single-slice 3D volume)."""
    spacing, origin, direction = record_geometry(record, np.shape(array))
    return write_volume(array, path, spacing=spacing, origin=origin, direction=direction,
                        compression_level=compression_level)


def _color01(color: Sequence[float]) -> list[float]:
    c = [float(v) for v in color]
    if len(c) != 3:
        raise ValueError(f"segment colour must be RGB, got {color!r}")
    if max(c) > 1.0:
        c = [v / 255.0 for v in c]
    return c


def write_seg_nrrd(
    labelmap: np.ndarray,
    record: ImageRecord,
    path: str | Path,
    segments: Sequence[dict[str, Any]],
    *,
    compression_level: int = DEFAULT_COMPRESSION,
) -> Path:
    """Write a label map as a 3D Slicer segmentation (.seg.nrrd) with segment names and colours.

    ``segments``: ``[{"name": "femur", "color": (r, g, b) in 0-1 or 0-255, "value": 1}, ...]``; every
    non-zero label in ``labelmap`` must have a segment.
    """
    import slicerio

    lab = np.asarray(labelmap)
    if lab.dtype.kind not in "biu":
        raise ValueError(f"labelmap must be integer or bool, got {lab.dtype}")
    spacing, origin, direction = record_geometry(record, lab.shape)
    vol, sp, o, d = _as_3d(lab, spacing, origin, direction)
    values = {int(s["value"]) for s in segments}
    present = {int(v) for v in np.unique(vol)} - {0}
    missing = sorted(present - values)
    if missing:
        raise ValueError(f"labelmap values {missing} have no segment (segments cover {sorted(values)})")
    if any(v <= 0 for v in values) or len(values) != len(segments):
        raise ValueError("segment values must be unique positive integers")
    dtype = np.uint8 if max(values | {0}) < 256 else np.uint16
    aff = affine_lps(sp, o, d)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = aff[:3, :3][:, ::-1]
    ijk_to_lps[:3, 3] = aff[:3, 3]
    seg = {
        "voxels": np.asarray(vol, dtype=dtype).transpose(2, 1, 0),  # (i, j, k) for index_order 'F'
        "ijkToLPS": ijk_to_lps,
        "encoding": "gzip",
        "segments": [
            {
                "id": f"Segment_{int(s['value'])}",
                "name": str(s["name"]),
                "color": _color01(s.get("color", (0.5, 0.5, 0.5))),
                "labelValue": int(s["value"]),
                "layer": 0,
            }
            for s in segments
        ],
    }
    with atomic_path(Path(path)) as tmp:
        slicerio.write_segmentation(str(tmp), seg, compression_level=compression_level)
    return Path(path)
