"""DICOM grey-scale display pipeline (PS3.3 C.11): stored value -> modality -> VOI -> presentation.

Stored values are first corrected for Bits Stored, then the Modality LUT / Rescale gives modality
units, the VOI LUT or window maps the range the vendor chose for viewing to [0, 1], and MONOCHROME1
is inverted so that bone (high attenuation) is bright for every image the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixel_data_handlers.util import apply_modality_lut

from .errors import ImageReadError

#: Modalities whose window/VOI LUT encodes the vendor's image processing (projection radiography).
PROJECTION_MODALITIES = frozenset({"CR", "DX", "RF", "XA", "MG", "IO", "PX", "DR", "XR"})


def correct_bits_stored(arr: np.ndarray, bits_stored: int | None, signed: bool) -> np.ndarray:
    """Mask bits above Bits Stored (overlay bits, junk) and sign-extend signed stored values."""
    if arr.dtype.kind not in "iu" or not bits_stored:
        return arr
    nbits = arr.dtype.itemsize * 8
    if bits_stored >= nbits:
        return arr
    if signed:
        work = arr.astype(np.int64)
        shift = 64 - bits_stored
        return ((work << shift) >> shift).astype(np.int32 if bits_stored <= 32 else np.int64)
    return arr & np.asarray((1 << bits_stored) - 1, dtype=arr.dtype)


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _find(ds: Dataset, seq_name: str, keyword: str) -> Any:
    """Top-level attribute, else the one in the shared functional group (enhanced multi-frame)."""
    if keyword in ds:
        return ds[keyword].value
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(seq_name)
        if seq and keyword in seq[0]:
            return seq[0][keyword].value
    return None


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


def find_window(ds: Dataset) -> Window | None:
    center = _first(_find(ds, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_find(ds, "FrameVOILUTSequence", "WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(_find(ds, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR").upper()
    return Window(center, width, function)


def apply_window(x: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing to the output range [0, 1]."""
    c, w = window.center, window.width
    x = np.asarray(x, dtype=np.float32)
    if window.function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))).astype(np.float32)
    if window.function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0).astype(np.float32)
    if w <= 1.0:  # LINEAR with width 1 is a threshold at c - 0.5
        return (x > c - 0.5).astype(np.float32)
    return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0).astype(np.float32)


def stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _rescale(ds: Dataset) -> tuple[float, float] | None:
    slope = _find(ds, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _find(ds, "PixelValueTransformationSequence", "RescaleIntercept")
    if slope is None and intercept is None:
        return None
    return float(slope if slope is not None else 1.0), float(intercept if intercept is not None else 0.0)


def modality_values(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the Modality LUT sequence or Rescale Slope/Intercept (per frame when given per frame)."""
    info: dict[str, Any] = {}
    if "ModalityLUTSequence" in ds:
        info["modality_lut"] = "ModalityLUTSequence"
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32), info
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and arr.ndim == 3 and "PixelValueTransformationSequence" in per_frame[0]:
        out = np.empty(arr.shape, dtype=np.float32)
        for i, item in enumerate(per_frame[: arr.shape[0]]):
            pvt = item.PixelValueTransformationSequence[0]
            out[i] = arr[i] * float(pvt.get("RescaleSlope", 1.0)) + float(pvt.get("RescaleIntercept", 0.0))
        info["modality_lut"] = "per-frame rescale"
        return out, info
    rescale = _rescale(ds)
    out = arr.astype(np.float32)
    if rescale is not None and rescale != (1.0, 0.0):
        out = out * np.float32(rescale[0]) + np.float32(rescale[1])
        info["modality_lut"] = f"rescale slope={rescale[0]:g} intercept={rescale[1]:g}"
    return out, info


def modality_range(ds: Dataset) -> tuple[float, float]:
    """Range of modality values the stored range maps to (used to invert MONOCHROME1 without VOI)."""
    lo, hi = stored_range(ds)
    ends = np.array([lo, hi], dtype=np.int64)
    if "ModalityLUTSequence" in ds:
        mapped = np.asarray(apply_modality_lut(np.clip(ends, 0, None).astype(np.uint16), ds), dtype=float)
    else:
        slope, intercept = _rescale(ds) or (1.0, 0.0)
        mapped = ends * slope + intercept
    return float(mapped.min()), float(mapped.max())


def apply_lut_item(x: np.ndarray, item: Dataset, signed: bool = False) -> np.ndarray:
    """PS3.3 C.11.2.1.1 VOI LUT: values below the first mapped entry take the first LUT value, above
    the last the last one; the LUT's own output range is mapped to [0, 1]."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    n_entries = descriptor[0] or 65536
    first = descriptor[1]
    if signed and first >= 32768:
        first -= 65536  # first mapped value read as US although the input values are signed
    data = item.LUTData
    lut = np.asarray(data if hasattr(data, "__len__") else [data], dtype=np.float32)[:n_entries]
    lo, hi = float(lut.min()), float(lut.max())
    if hi <= lo:
        raise ImageReadError("VOI LUT sequence is constant; cannot display the image")
    index = np.clip(np.rint(np.asarray(x, dtype=np.float64)) - first, 0, len(lut) - 1).astype(np.int64)
    return (lut[index] - lo) / (hi - lo)


def voi_values(x: np.ndarray, ds: Dataset) -> tuple[np.ndarray, str | None]:
    """VOI LUT sequence (preferred, as pydicom does) or window, to [0, 1]; (x, None) when neither."""
    if "VOILUTSequence" in ds:
        signed = int(ds.get("PixelRepresentation", 0)) == 1 or float(np.min(x)) < 0
        return apply_lut_item(x, ds.VOILUTSequence[0], signed), "VOILUTSequence"
    window = find_window(ds)
    if window is None:
        return x, None
    return apply_window(x, window), f"window C={window.center:g} W={window.width:g} {window.function}"


def to_display(
    arr: np.ndarray, ds: Dataset, *, apply_voi_lut: bool, modality: str | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stored grey values -> float32 display values with bone bright."""
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    arr = correct_bits_stored(arr, ds.get("BitsStored"), signed)
    x, info = modality_values(arr, ds)
    info["voi"] = None
    if apply_voi_lut and (modality or "").upper() in PROJECTION_MODALITIES:
        x, info["voi"] = voi_values(x, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    info["inverted"] = photometric == "MONOCHROME1"
    if info["inverted"]:
        if info["voi"] is not None:
            x = 1.0 - x
        else:
            lo, hi = modality_range(ds)
            x = (lo + hi) - x
    return np.asarray(x, dtype=np.float32), info
