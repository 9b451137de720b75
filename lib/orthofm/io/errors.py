"""Errors and warnings raised by :mod:`orthofm.io`.

Readers fail loudly with a message that names the problem (users see these in Slicer and in the
MONAI Label server log), and warn once when a figure downstream users rely on (mm) is unknown.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
_MAX_SIDE = 1 << 17  # 131072 px: no real film or slice is larger on one side


class ImageReadError(ValueError):
    """An input could not be read as a medical image; the message says why."""


class SpacingUnknownWarning(UserWarning):
    """The file carries no pixel spacing: any mm figure computed from it would be invented."""


def check_dims(shape: tuple[int, ...], max_pixels: int | None, source: object) -> None:
    """Reject zero, absurd or too large dimensions from a header, before any pixel is decoded."""
    dims = tuple(int(d) for d in shape)
    if not dims or any(d <= 0 for d in dims):
        raise ImageReadError(f"{source}: zero or negative image dimensions {dims} in the header")
    if any(d > _MAX_SIDE for d in dims):
        raise ImageReadError(
            f"{source}: absurd image dimensions {dims} (more than {_MAX_SIDE} pixels on one side)"
        )
    total = int(np.prod(dims, dtype=np.int64))
    if max_pixels is not None and total > max_pixels:
        raise ImageReadError(
            f"{source}: too many pixels ({total:,} > max_pixels={max_pixels:,}); refusing to decode a "
            "possible decompression bomb (raise max_pixels if the image is genuine)"
        )


def check_finite(array: np.ndarray, source: object) -> None:
    """NaN or inf poison normalisation and every statistic computed downstream."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        n_nan = int(np.isnan(array).sum())
        n_inf = int(np.isinf(array).sum())
        raise ImageReadError(f"{source}: image contains non-finite values (NaN: {n_nan}, inf: {n_inf})")
