"""Single-file DICOM reading: radiographs (CR/DX/RF/XA, single and multi-frame) and single slices.

Header checks (pixel data present, dimensions, pixel budget, decodable transfer syntax) run before
any pixel is decoded, so a bad or hostile file costs a header read, not gigabytes of RAM.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space

from .codecs import JPEG_BASELINE, NAMES, NATIVE, choose_handler, ensure_decodable
from .display import to_display
from .errors import DEFAULT_MAX_PIXELS, ImageReadError, SpacingUnknownWarning, check_dims, check_finite
from .geometry import direction_2d_from_iop
from .record import ImageRecord

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as DICOM YBR_FULL uses


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_header(path: str | Path, *, force: bool = False) -> Dataset:
    """Read a DICOM header; large elements (pixel data) stay on disk until needed."""
    try:
        return pydicom.dcmread(str(path), defer_size="256 KB", force=force)
    except InvalidDicomError as exc:
        raise ImageReadError(f"{path}: not an image: not a DICOM file ({exc})") from exc
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ImageReadError(f"{path}: not an image: unreadable DICOM header ({exc})") from exc


def _text(ds: Dataset, *keywords: str) -> str | None:
    for kw in keywords:
        value = ds.get(kw)
        if value not in (None, ""):
            return str(value).strip() or None
    return None


def n_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def check_header(ds: Dataset, source: object, max_pixels: int | None) -> None:
    """Everything we can reject before decoding."""
    if not any(kw in ds for kw in PIXEL_KEYWORDS):
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise ImageReadError(f"{source}: DICOM without pixel data{kind}: nothing to display")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        raise ImageReadError(f"{source}: DICOM pixel data without Rows/Columns: zero image dimensions")
    frames = n_frames(ds)
    check_dims((frames, int(rows), int(cols)) if frames > 1 else (int(rows), int(cols)), max_pixels, source)
    ensure_decodable(transfer_syntax(ds), source)


def pixel_spacing_2d(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row spacing, column spacing) in mm and which attribute gave it (PS3.3 10.7.1.3)."""

    def pair(value: Any) -> tuple[float, float] | None:
        try:
            r, c = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            return None
        return (r, c) if r > 0 and c > 0 else None

    shared = ds.get("SharedFunctionalGroupsSequence")
    measures = shared[0].get("PixelMeasuresSequence") if shared else None
    candidates = [
        ("PixelSpacing", ds.get("PixelSpacing")),
        ("PixelMeasuresSequence.PixelSpacing", measures[0].get("PixelSpacing") if measures else None),
    ]
    for name, value in candidates:
        if value is not None and pair(value):
            return pair(value), name
    imager = pair(ds.get("ImagerPixelSpacing")) if ds.get("ImagerPixelSpacing") is not None else None
    if imager:
        ermf = ds.get("EstimatedRadiographicMagnificationFactor")
        if ermf is not None and float(ermf) > 0:
            mag = float(ermf)
            return (imager[0] / mag, imager[1] / mag), "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
        return imager, "ImagerPixelSpacing (detector plane)"
    scanned = ds.get("NominalScannedPixelSpacing")
    if scanned is not None and pair(scanned):
        return pair(scanned), "NominalScannedPixelSpacing"
    return None, None


#: SOP classes for which ITK/GDCM (hence 3D Slicer and MONAI's ITKReader) take the spacing from
#: Imager Pixel Spacing and ignore Pixel Spacing (checked against SimpleITK in tests/test_io_write.py).
_IMAGER_SPACING_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.1.",  # DX, MG, IO (1.1.1.x, 1.1.2.x, 1.1.3.x); CR is 1.1 exactly
    "1.2.840.10008.5.1.4.1.1.12.",  # XA, RF, bi-plane
)


def viewer_spacing(ds: Dataset) -> tuple[float, float]:
    """The (row, col) spacing ITK/GDCM assign on load (1.0 when absent): the grid 3D Slicer displays.

    Results are written on this grid so they overlay the image a viewer loaded from the same file,
    even where it differs from the DICOM-calibrated ``record.spacing``.
    """
    sop = str(ds.get("SOPClassUID", ""))
    xray = sop == "1.2.840.10008.5.1.4.1.1.1" or sop.startswith(_IMAGER_SPACING_SOP_PREFIXES)
    value = ds.get("ImagerPixelSpacing") if xray else ds.get("PixelSpacing")
    try:
        return float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
        return 1.0, 1.0


def transfer_syntax(ds: Dataset) -> str:
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))


def decode(ds: Dataset, source: object) -> np.ndarray:
    """Pixel data through the handler :func:`codecs.choose_handler` picks (not pydicom's default order)."""
    ts = transfer_syntax(ds)
    ensure_decodable(ts, source)
    handler = choose_handler(ts)
    try:
        if handler:
            ds.convert_pixel_data(handler_name=handler)
        arr = ds.pixel_array
    except Exception as exc:
        via = f" by {handler}" if handler else ""
        raise ImageReadError(
            f"{source}: pixel data could not be decoded{via} (transfer syntax {ts}, {NAMES.get(ts, 'unknown')}): "
            f"corrupt or truncated data? ({type(exc).__name__}: {exc})"
        ) from exc
    return np.asarray(arr)


def ybr_left_by_decoder(ts: str) -> bool:
    """pydicom 2.4 returns YCbCr for YBR_FULL(_422) from native, RLE and Pillow-decoded JPEG data;
    GDCM and pylibjpeg convert JPEG to RGB themselves."""
    if ts in NATIVE:
        return True
    if ts in JPEG_BASELINE:
        return choose_handler(ts) == "pillow"
    return False


def to_grey(arr: np.ndarray, ds: Dataset, frames: int) -> tuple[np.ndarray, bool]:
    """Colour (RGB/YBR/palette) pixel data -> luminance; returns (array, was_colour)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif int(ds.get("SamplesPerPixel", 1)) == 1:
        return arr, False
    if photometric in ("YBR_FULL", "YBR_FULL_422") and ybr_left_by_decoder(transfer_syntax(ds)):
        arr = convert_color_space(arr, photometric, "RGB")
    arr = arr.astype(np.float32)
    if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        return arr[..., 0], True
    return arr[..., :3] @ _LUMA, True


def describe(ds: Dataset) -> dict[str, Any]:
    """JSON-friendly header facts needed to write results back (UIDs) and to audit decoding."""
    keys = (
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "SOPClassUID",
        "Manufacturer", "BitsAllocated", "BitsStored", "PixelRepresentation", "PresentationLUTShape",
        "SeriesNumber", "InstanceNumber", "SeriesDescription",
    )
    meta: dict[str, Any] = {}
    for key in keys:
        value = ds.get(key)
        if value is not None and value != "":
            meta[key] = value if isinstance(value, (int, float)) else str(value)
    if hasattr(ds, "file_meta") and "TransferSyntaxUID" in ds.file_meta:
        meta["TransferSyntaxUID"] = str(ds.file_meta.TransferSyntaxUID)
        try:
            meta["decoder"] = choose_handler(meta["TransferSyntaxUID"]) or "pydicom"
        except ImageReadError:
            meta["decoder"] = None
    return meta


def read_dicom_file(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    apply_voi_lut: bool = True,
    ds: Dataset | None = None,
) -> ImageRecord:
    """Decode one DICOM file to display values: (H,W) or (frames,H,W) float32, bone bright."""
    source = str(path)
    ds = ds if ds is not None else read_header(path)
    check_header(ds, source, max_pixels)
    frames = n_frames(ds)
    raw = decode(ds, source)
    modality = _text(ds, "Modality")
    arr, colour = to_grey(raw, ds, frames)
    if colour:
        info: dict[str, Any] = {"voi": None, "inverted": False, "colour": "luminance"}
        arr = arr.astype(np.float32)
    else:
        arr, info = to_display(arr, ds, apply_voi_lut=apply_voi_lut, modality=modality)
    check_finite(arr, source)
    if frames == 1 and arr.ndim == 3:  # pydicom keeps a frame axis for some handlers
        arr = arr[0]

    spacing2d, spacing_source = pixel_spacing_2d(ds)
    meta = describe(ds) | info | {
        "spacing_source": spacing_source,
        "frames": frames,
        "source_spacing": viewer_spacing(ds),
    }
    if spacing2d is None:
        warnings.warn(
            f"{source}: no PixelSpacing/ImagerPixelSpacing: spacing is unknown (record.spacing=None); "
            "mm measurements from this image are not possible",
            SpacingUnknownWarning,
            stacklevel=3,
        )
    origin = direction = None
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is not None and ipp is not None and len(iop) == 6 and len(ipp) == 3:
        direction = direction_2d_from_iop([float(v) for v in iop])
        origin = tuple(float(v) for v in ipp)

    spacing: tuple[float, ...] | None = spacing2d
    if arr.ndim == 3:
        meta["pixel_spacing"] = spacing2d
        meta["frame_axis"] = "frame"
        spacing = None  # frames are time/projections; use record.frame(i) for a 2D record with spacing
        if direction is not None:
            direction = direction[:, [2, 0, 1]]
        from .series import enhanced_geometry  # local import: series imports this module

        geom = enhanced_geometry(ds, frames)
        if geom is not None:
            order, spacing, origin, direction = geom
            arr = arr[order]
            meta["frame_axis"] = "slice"
    return ImageRecord(
        array=np.ascontiguousarray(arr, dtype=np.float32),
        spacing=spacing,
        origin=origin,
        direction=direction,
        modality=modality,
        body_part=_text(ds, "BodyPartExamined"),
        laterality=_text(ds, "ImageLaterality", "Laterality", "FrameLaterality"),
        view=_text(ds, "ViewPosition"),
        photometric=_text(ds, "PhotometricInterpretation"),
        source=source,
        metadata=meta,
    )
