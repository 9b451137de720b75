"""The record every reader returns: pixels plus the geometry needed to write results back."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ImageRecord:
    """A decoded image in display orientation (bone bright), float32.

    ``array`` is (H, W) for 2D or (D, H, W) for 3D, in row-major image order. ``spacing`` is in mm per
    array axis (None when the file does not say). ``origin`` is the LPS position (mm) of array index
    (0, 0[, 0]); ``direction`` is a 3x3 matrix whose column ``a`` is the LPS unit vector of increasing
    index along array axis ``a`` (for 2D: columns for axis 0, axis 1 and the plane normal).
    """

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    origin: tuple[float, float, float] | None = None
    direction: np.ndarray | None = None
    modality: str | None = None
    body_part: str | None = None
    laterality: str | None = None
    view: str | None = None
    photometric: str | None = None
    source: str | list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        return self.array.ndim == 3

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def frame(self, index: int) -> ImageRecord:
        """One slice / frame of a 3D record as a 2D record (geometry kept when known)."""
        if not self.is_volume:
            raise ValueError("frame() needs a 3D record")
        spacing = self.spacing[1:] if self.spacing is not None else self.metadata.get("pixel_spacing")
        origin = None
        if self.origin is not None and self.direction is not None and self.spacing is not None:
            origin = tuple(
                float(v) for v in np.asarray(self.origin) + self.direction[:, 0] * self.spacing[0] * index
            )
        direction = None
        if self.direction is not None:
            direction = self.direction[:, [1, 2, 0]].copy()
        src = self.source[index] if isinstance(self.source, list) and len(self.source) > index else self.source
        meta = dict(self.metadata, frame_index=index)
        return replace(
            self,
            array=self.array[index],
            spacing=tuple(spacing) if spacing is not None else None,
            origin=origin,
            direction=direction,
            source=src,
            metadata=meta,
        )


def as_source(path_or_paths: Any) -> str | list[str]:
    if isinstance(path_or_paths, (list, tuple)):
        return [str(Path(p)) for p in path_or_paths]
    return str(Path(path_or_paths))
