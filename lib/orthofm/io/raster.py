"""PNG / JPEG / TIFF reading (exports of radiographs, public datasets), to grey float32.

The size is read from the file header (PNG IHDR, JPEG SOF, TIFF tags via PIL's lazy open) and checked
against ``max_pixels`` before a single pixel is decoded.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DEFAULT_MAX_PIXELS, ImageReadError, SpacingUnknownWarning, check_dims, check_finite
from .record import ImageRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def png_header(head: bytes) -> tuple[int, int, int, int] | None:
    """(height, width, bit depth, colour type) from the IHDR chunk, or None when not a PNG."""
    if not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR" or len(head) < 26:
        return None
    width, height = struct.unpack(">II", head[16:24])
    return height, width, head[24], head[25]


def jpeg_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the first SOF marker, walking segment lengths (no decoding)."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            return None
        while True:
            byte = fh.read(1)
            while byte == b"\xff":
                byte = fh.read(1)
            if not byte:
                return None
            marker = byte[0]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                continue
            raw_len = fh.read(2)
            if len(raw_len) < 2:
                return None
            length = struct.unpack(">H", raw_len)[0]
            if marker in _SOF_MARKERS:
                seg = fh.read(5)
                if len(seg) < 5:
                    return None
                height, width = struct.unpack(">HH", seg[1:5])
                return height, width
            fh.seek(length - 2, 1)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    return rgb[..., :3] @ _LUMA


def _pil_to_grey(im: Image.Image) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode in ("P", "PA"):
        return _luminance(np.asarray(im.convert("RGB"))), "palette"
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return _luminance(np.asarray(im.convert("RGB") if mode not in ("RGB", "RGBA") else im)), "RGB"
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0), dtype=np.float32), "grey"
    arr = np.asarray(im)
    if arr.ndim == 3:
        return _luminance(arr), "RGB"
    return arr.astype(np.float32), "grey"


def _read_with_itk(path: Path) -> np.ndarray:
    """16-bit colour PNG/TIFF (which PIL silently reduces to 8 bits): decode with ITK instead."""
    import itk

    # explicit vector pixel type: itk.imread's automatic RGB<unsigned short> choice is not wrapped
    reader = itk.ImageFileReader[itk.VectorImage[itk.F, 2]].New(FileName=str(path))
    reader.Update()
    arr = np.asarray(itk.array_from_image(reader.GetOutput()))
    return _luminance(arr) if arr.ndim == 3 else arr.astype(np.float32)


def read_raster(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageRecord:
    """Read a PNG/JPEG/TIFF/BMP file as a (H,W) float32 grey image in its stored value range."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(32)
    png = png_header(head)
    deep_colour = False
    if png is not None:
        check_dims(png[:2], max_pixels, path)
        deep_colour = png[2] == 16 and png[3] in (2, 6)
    elif head.startswith(b"\xff\xd8"):
        size = jpeg_size(path)
        if size is None:
            raise ImageReadError(f"{path}: not an image: truncated JPEG header (no SOF marker)")
        check_dims(size, max_pixels, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: too many pixels (decompression bomb guard: {exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not an image: no reader recognises the file ({exc})") from exc
    with im:
        width, height = im.size
        n_frames = int(getattr(im, "n_frames", 1))
        check_dims((height, width), max_pixels, path)
        if max_pixels is not None and n_frames > 1 and n_frames * width * height > max_pixels:
            check_dims((n_frames, height, width), max_pixels, path)
        fmt = im.format
        mode = im.mode
        bit_depth = png[2] if png is not None else (16 if mode.startswith("I;16") else None)
        try:
            if deep_colour or (fmt == "TIFF" and mode == "RGB" and im.tag_v2.get(258, (8,))[0] == 16):
                arr, colour = _read_with_itk(path), "RGB"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    im.load()
                arr, colour = _pil_to_grey(im)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageReadError(f"{path}: image data could not be decoded ({exc})") from exc
    check_finite(arr, path)
    warnings.warn(
        "PNG/JPEG/TIFF carry no reliable pixel spacing: record.spacing=None, mm measurements are not "
        "possible (record.metadata['source_spacing'] holds what a viewer would assume)",
        SpacingUnknownWarning,
        stacklevel=3,
    )
    return ImageRecord(
        array=np.ascontiguousarray(arr, dtype=np.float32),
        spacing=None,
        photometric={"grey": "MONOCHROME2", "RGB": "RGB", "palette": "PALETTE COLOR"}[colour],
        source=str(path),
        metadata={
            "format": fmt,
            "mode": mode,
            "bit_depth": bit_depth,
            "colour": colour if colour == "grey" else "luminance",
            "frames": n_frames,
            "source_spacing": (1.0, 1.0),
            "spacing_source": None,
        },
    )
