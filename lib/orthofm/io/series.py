"""DICOM series assembly: files of one series -> one (D,H,W) volume in patient geometry.

Slices are ordered by ImagePositionPatient projected on the slice normal (never by file name or
InstanceNumber, which scanners and anonymisers reorder), and the stack is validated: one series,
one orientation, one matrix size, evenly spaced slices along the normal (no gaps, no duplicates).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from .dicom import _text, check_header, decode, describe, is_dicom_file, n_frames, read_header, to_grey
from .display import to_display
from .errors import DEFAULT_MAX_PIXELS, ImageReadError, check_dims, check_finite
from .geometry import direction_3d_from_iop
from .record import ImageRecord

SPACING_RTOL = 0.01  # 1 % of the slice step: far above DICOM DS rounding, far below a missing slice
ORIENTATION_ATOL = 1e-3


def list_dicom_files(folder: Path) -> list[Path]:
    """DICOM Part 10 files in a folder (not recursive); DICOMDIR and non-DICOM files are skipped."""
    files = [
        p for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR" and is_dicom_file(p)
    ]
    if not files:
        raise ImageReadError(f"{folder}: not an image: folder holds no DICOM files")
    return files


def _floats(value: Any, n: int, what: str, source: object) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(f"{source}: missing or malformed {what}") from exc
    if out.shape != (n,):
        raise ImageReadError(f"{source}: malformed {what} ({value!r})")
    return out


def stack_geometry(
    positions: np.ndarray,
    iop: np.ndarray,
    pixel_spacing: tuple[float, float] | None,
    source: object,
    fallback_step: float | None = None,
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """Sort slice positions along the normal and validate them.

    Returns (order, spacing (D,H,W) mm, origin LPS, direction 3x3 in array order).
    """
    direction = direction_3d_from_iop(iop)
    normal = direction[:, 0]
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    proj_sorted = proj[order]
    steps = np.diff(proj_sorted)
    if len(positions) > 1:
        if np.any(steps < 1e-4):
            n_dup = int(np.sum(steps < 1e-4))
            raise ImageReadError(
                f"{source}: mixed series: {n_dup} slice(s) share a position along the normal "
                "(several echoes, time points or series in one folder?)"
            )
        step = float(np.median(steps))
        if np.max(np.abs(steps - step)) > SPACING_RTOL * step + 1e-4:
            raise ImageReadError(
                f"{source}: inconsistent slice spacing along the normal: steps from {steps.min():.4g} to "
                f"{steps.max():.4g} mm (missing slices or a non-uniform stack)"
            )
        offsets = positions[order] - np.outer(proj_sorted, normal)
        drift = np.linalg.norm(offsets - offsets[0], axis=1).max()
        if drift > SPACING_RTOL * step + 1e-3:
            raise ImageReadError(
                f"{source}: inconsistent orientation: slice positions drift {drift:.3g} mm in-plane "
                "(gantry tilt or a sheared stack); resample before use"
            )
    else:
        step = float(fallback_step) if fallback_step else 1.0
    ps = pixel_spacing if pixel_spacing is not None else (1.0, 1.0)
    spacing = (step, float(ps[0]), float(ps[1]))
    origin = tuple(float(v) for v in positions[order[0]])
    return order, spacing, origin, direction  # type: ignore[return-value]


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    value = ds.get("PixelSpacing")
    if value is None:
        return None
    return float(value[0]), float(value[1])


def has_slice_geometry(ds: Dataset) -> bool:
    """True when a file can be stacked: it has ImagePositionPatient and ImageOrientationPatient."""
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    return ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6


def _reject_separate_images(headers: list[tuple[Path, Dataset]], source: object) -> None:
    """Several files of which some are 2D images without slice geometry (radiographs): not a series.

    Stacking separate films (AP + lateral, left + right) into a volume would be meaningless, and
    failing later on the missing ImagePositionPatient would not say why.
    """
    flat = [(p, ds) for p, ds in headers if n_frames(ds) == 1 and not has_slice_geometry(ds)]
    if len(headers) < 2 or not flat:
        return
    kinds = sorted({_text(ds, "Modality") or "unknown modality" for _, ds in flat})
    names = ", ".join(p.name for p, _ in flat[:3]) + (", ..." if len(flat) > 3 else "")
    raise ImageReadError(
        f"{source}: not a series: {len(flat)} of {len(headers)} DICOM files are separate 2D images "
        f"({', '.join(kinds)}: {names}) without ImagePositionPatient/ImageOrientationPatient, so they "
        "cannot be stacked into a volume; read each file with read_image(file)"
    )


def _group_by_series(headers: list[tuple[Path, Dataset]], series_uid: str | None, source: object):
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in headers:
        groups[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
    if series_uid is not None:
        if series_uid not in groups:
            raise ImageReadError(f"{source}: no file of series {series_uid} (found {sorted(groups)})")
        return groups[series_uid]
    if len(groups) > 1:
        summary = ", ".join(f"{uid} ({len(v)} files)" for uid, v in sorted(groups.items()))
        raise ImageReadError(
            f"{source}: mixed series in one folder: {len(groups)} SeriesInstanceUIDs: {summary}; "
            "pass series_uid= or one series' files"
        )
    return next(iter(groups.values()))


def read_dicom_series(
    path_or_paths: str | Path | Sequence[str | Path],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    apply_voi_lut: bool = True,
    series_uid: str | None = None,
) -> ImageRecord:
    """Read a DICOM series (folder or list of files) as a (D,H,W) float32 volume with LPS geometry."""
    if isinstance(path_or_paths, (str, Path)):
        folder = Path(path_or_paths)
        files = list_dicom_files(folder)
        source: object = folder
    else:
        files = [Path(p) for p in path_or_paths]
        if not files:
            raise ImageReadError("empty list of DICOM files: not an image")
        source = files[0].parent if len(files) > 1 else files[0]
    headers = [(p, read_header(p)) for p in files]
    if series_uid is None and all(not has_slice_geometry(ds) and n_frames(ds) == 1 for _, ds in headers):
        _reject_separate_images(headers, source)  # several films: say so rather than "mixed series"
    members = _group_by_series(headers, series_uid, source)
    if len(members) == 1 and (n_frames(members[0][1]) > 1 or not has_slice_geometry(members[0][1])):
        # one radiograph or multi-frame object: the same record as reading that file
        from .dicom import read_dicom_file

        return read_dicom_file(members[0][0], max_pixels=max_pixels, apply_voi_lut=apply_voi_lut,
                               ds=members[0][1])
    _reject_separate_images(members, source)

    first = members[0][1]
    rows, cols = int(first.get("Rows") or 0), int(first.get("Columns") or 0)
    for path, ds in members:
        check_header(ds, path, None)
        if n_frames(ds) > 1:
            raise ImageReadError(
                f"{source}: mixed series: {path.name} is a multi-frame object inside a multi-file series "
                "(read multi-frame files one by one)"
            )
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ImageReadError(
                f"{source}: mixed series: matrix {ds.Rows}x{ds.Columns} in {path.name} vs {rows}x{cols}"
            )
    check_dims((len(members), rows, cols), max_pixels, source)
    iops = np.stack([_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", p)
                     for p, ds in members])
    if np.abs(iops - iops[0]).max() > ORIENTATION_ATOL:
        raise ImageReadError(
            f"{source}: inconsistent orientation: ImageOrientationPatient differs between slices "
            "(a localizer or a multi-planar series mixed in?)"
        )
    positions = np.stack([_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", p)
                          for p, ds in members])
    fallback = first.get("SpacingBetweenSlices") or first.get("SliceThickness")
    order, spacing, origin, direction = stack_geometry(
        positions, iops[0], _pixel_spacing(first), source, float(fallback) if fallback else None
    )
    modality = _text(first, "Modality")
    volume = np.empty((len(members), rows, cols), dtype=np.float32)
    infos = []
    for out_index, member_index in enumerate(order):
        path, ds = members[int(member_index)]
        raw, colour = to_grey(decode(ds, path), ds, 1)
        if colour:
            volume[out_index] = raw
            infos.append({"colour": "luminance"})
            continue
        values, info = to_display(raw, ds, apply_voi_lut=apply_voi_lut, modality=modality)
        volume[out_index] = values
        infos.append(info)
    check_finite(volume, source)
    sorted_paths = [str(members[int(i)][0]) for i in order]
    meta = describe(first) | {
        "spacing_source": "ImagePositionPatient/PixelSpacing",
        "slice_sop_instance_uids": [str(members[int(i)][1].get("SOPInstanceUID", "")) for i in order],
        "voi": infos[0].get("voi"),
        "inverted": infos[0].get("inverted", False),
        "window": _window_meta(first),
    }
    meta.pop("SOPInstanceUID", None)
    meta.pop("InstanceNumber", None)
    return ImageRecord(
        array=volume,
        spacing=spacing,
        origin=origin,
        direction=direction,
        modality=modality,
        body_part=_text(first, "BodyPartExamined"),
        laterality=_text(first, "Laterality", "ImageLaterality"),
        view=_text(first, "ViewPosition"),
        photometric=_text(first, "PhotometricInterpretation"),
        source=sorted_paths,
        metadata=meta,
    )


def _window_meta(ds: Dataset) -> tuple[float, float] | None:
    from .display import find_window

    window = find_window(ds)
    return (window.center, window.width) if window else None


def enhanced_geometry(ds: Dataset, frames: int):
    """Geometry of an enhanced multi-frame (MR/CT) object from its functional groups, else None.

    Returns (order, spacing, origin, direction); frames must be reordered by ``order``.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != frames:
        return None

    def lookup(item: Dataset, seq: str, kw: str):
        for group in (item, shared[0] if shared else None):
            if group is not None and seq in group and kw in group[seq][0]:
                return group[seq][0][kw].value
        return None

    try:
        positions = np.stack([
            np.asarray([float(v) for v in lookup(f, "PlanePositionSequence", "ImagePositionPatient")])
            for f in per_frame
        ])
        iops = np.stack([
            np.asarray([float(v) for v in lookup(f, "PlaneOrientationSequence", "ImageOrientationPatient")])
            for f in per_frame
        ])
    except (TypeError, ValueError):
        return None
    if np.abs(iops - iops[0]).max() > ORIENTATION_ATOL:
        raise ImageReadError(f"{ds.filename}: inconsistent orientation between frames of one object")
    ps = lookup(per_frame[0], "PixelMeasuresSequence", "PixelSpacing")
    pixel_spacing = (float(ps[0]), float(ps[1])) if ps is not None else None
    thickness = lookup(per_frame[0], "PixelMeasuresSequence", "SpacingBetweenSlices")
    return stack_geometry(positions, iops[0], pixel_spacing, ds.filename, float(thickness) if thickness else None)
