"""Which pydicom pixel handler decodes which DICOM transfer syntax (chosen and checked before decoding).

pydicom only finds out deep inside ``pixel_array`` that no handler fits; checking first lets us say
which package to install instead of a generic "no handler" traceback. The handler is also chosen here
explicitly, per transfer syntax, because pydicom 2.4 tries GDCM first whenever python-gdcm is installed:
an explicit order keeps JPEG 2000 and baseline JPEG on the decoders they were validated with and makes
colour handling (who converts YCbCr) predictable.
"""

from __future__ import annotations

from pydicom.pixel_data_handlers import gdcm_handler, jpeg_ls_handler, pillow_handler, pylibjpeg_handler

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

#: pydicom handler name -> the package(s) a user installs to get it (for error messages).
PACKAGES = {
    "pillow": "Pillow",
    "pylibjpeg": "pylibjpeg + pylibjpeg-openjpeg (JPEG 2000) / pylibjpeg-libjpeg (JPEG, GPL-3)",
    "gdcm": "python-gdcm",
    "jpeg_ls": "pyjpegls (CharLS)",
}


def _preferences(ts: str) -> tuple[str, ...]:
    """pydicom handler names that can decode ``ts``, best first."""
    if ts in JPEG_2000:
        return ("pillow", "pylibjpeg", "gdcm")  # Pillow/OpenJPEG: validated bit-exact on RG3 J2KR
    if ts == JPEG_BASELINE[0]:
        return ("pillow", "gdcm", "pylibjpeg")
    if ts == JPEG_BASELINE[1]:
        return ("gdcm", "pylibjpeg")  # Pillow cannot decode 12-bit JPEG
    if ts in JPEG_LOSSLESS:
        return ("gdcm", "pylibjpeg")
    if ts in JPEG_LS:
        return ("gdcm", "jpeg_ls", "pylibjpeg")
    return ()


def handler_available(name: str, ts: str) -> bool:
    """True when pydicom's handler ``name`` is importable and has the codec for ``ts``."""
    if name == "gdcm":
        return bool(gdcm_handler.is_available())
    if name == "jpeg_ls":
        return bool(jpeg_ls_handler.is_available())
    if name == "pillow":
        flag = "HAVE_JPEG2K" if ts in JPEG_2000 else "HAVE_JPEG"
        return bool(getattr(pillow_handler, "HAVE_NP", True) and getattr(pillow_handler, flag, False))
    if name == "pylibjpeg":
        if not getattr(pylibjpeg_handler, "HAVE_PYLIBJPEG", False):
            return False
        flag = "HAVE_OPENJPEG" if ts in JPEG_2000 else "HAVE_LIBJPEG"
        return bool(getattr(pylibjpeg_handler, flag, False))
    return False


def choose_handler(ts: str) -> str:
    """The pydicom handler name to decode ``ts`` with ('' = pydicom's own native/RLE path).

    Raises ImageReadError (naming what to install) when none is installed.
    """
    if ts in NATIVE:
        return ""
    for name in _preferences(ts):
        if handler_available(name, ts):
            return name
    raise ImageReadError(unsupported_message(ts))


def decoders_for(ts: str) -> tuple[list[str], list[str]]:
    """(installed decoders, packages that would decode it) for a transfer syntax UID."""
    if ts in NATIVE:
        return ["pydicom"], ["pydicom"]
    prefs = _preferences(ts)
    if not prefs and ts.startswith("1.2.840.10008.1.2.4.20"):
        return [], ["pydicom>=3 with pylibjpeg-openjpeg>=2.2 (HTJ2K)"]
    installed = [PACKAGES[n] for n in prefs if handler_available(n, ts)]
    return installed, [PACKAGES[n] for n in prefs]


def unsupported_message(ts: str) -> str:
    name = NAMES.get(ts, "unknown")
    _, wanted = decoders_for(ts)
    if wanted:
        return (f"unsupported transfer syntax {ts} ({name}): no decoder installed; "
                f"install {' or '.join(wanted)} to decode it")
    return (f"unsupported transfer syntax {ts} ({name}): no pixel data plugin decodes it "
            "(convert the file to an uncompressed or JPEG 2000 DICOM first, e.g. with dcmconv/gdcmconv)")


def ensure_decodable(ts: str, source: object) -> None:
    """Raise ImageReadError naming the plugin to install when no decoder for ``ts`` is installed."""
    try:
        choose_handler(ts)
    except ImageReadError as exc:
        raise ImageReadError(f"{source}: {exc}") from None
