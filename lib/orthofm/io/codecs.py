"""Which installed plugin decodes which DICOM transfer syntax (checked before decoding).

pydicom only finds out deep inside ``pixel_array`` that no handler fits; checking first lets us say
which package to install instead of a generic "no handler" traceback.
"""

from __future__ import annotations

from pydicom.pixel_data_handlers import pillow_handler, pylibjpeg_handler

from .errors import ImageReadError

NATIVE = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",  # pydicom's own RLE decoder
}

JPEG_BASELINE = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
JPEG_LOSSLESS = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")

NAMES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (8-bit)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (12-bit)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 (RPCL) Lossless",
    "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000",
    "1.2.840.10008.1.2.4.100": "MPEG2 video",
    "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264 video",
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    **NATIVE,
}


def _have(module: object, flag: str) -> bool:
    return bool(getattr(module, flag, False))


def decoders_for(ts: str) -> tuple[list[str], list[str]]:
    """(installed decoders, plugins that would decode it) for a transfer syntax UID."""
    if ts in NATIVE:
        return ["pydicom"], ["pydicom"]
    plj = _have(pylibjpeg_handler, "HAVE_PYLIBJPEG")
    installed: list[str] = []
    if ts in JPEG_2000:
        wanted = ["pylibjpeg + pylibjpeg-openjpeg", "Pillow with OpenJPEG"]
        if plj and _have(pylibjpeg_handler, "HAVE_OPENJPEG"):
            installed.append(wanted[0])
        if _have(pillow_handler, "HAVE_JPEG2K"):
            installed.append(wanted[1])
        return installed, wanted
    if ts in JPEG_BASELINE:
        wanted = ["pylibjpeg + pylibjpeg-libjpeg", "Pillow (8-bit only)", "python-gdcm"]
        if plj and _have(pylibjpeg_handler, "HAVE_LIBJPEG"):
            installed.append(wanted[0])
        if ts == JPEG_BASELINE[0] and _have(pillow_handler, "HAVE_JPEG"):
            installed.append(wanted[1])
        return installed, wanted
    if ts in JPEG_LOSSLESS or ts in JPEG_LS:
        wanted = ["pylibjpeg + pylibjpeg-libjpeg", "python-gdcm"]
        if ts in JPEG_LS:
            wanted.append("pyjpegls (CharLS)")
        if plj and _have(pylibjpeg_handler, "HAVE_LIBJPEG"):
            installed.append(wanted[0])
        return installed, wanted
    if ts.startswith("1.2.840.10008.1.2.4.20"):
        return [], ["pydicom>=3 with pylibjpeg-openjpeg>=2.2 (HTJ2K)"]
    return [], []


def ensure_decodable(ts: str, source: object) -> None:
    """Raise ImageReadError naming the plugin to install when no decoder for ``ts`` is installed."""
    installed, wanted = decoders_for(ts)
    if installed:
        return
    name = NAMES.get(ts, "unknown")
    if wanted:
        raise ImageReadError(
            f"{source}: unsupported transfer syntax {ts} ({name}): no decoder installed; "
            f"install {' or '.join(wanted)} to decode it"
        )
    raise ImageReadError(
        f"{source}: unsupported transfer syntax {ts} ({name}): no pixel data plugin decodes it "
        "(convert the file to an uncompressed or JPEG 2000 DICOM first, e.g. with dcmconv/gdcmconv)"
    )
