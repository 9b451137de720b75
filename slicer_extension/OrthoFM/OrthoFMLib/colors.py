"""Colours: the heatmap colour table and segment colours.

The heatmap table runs dark red -> red -> orange -> yellow -> white so that higher values are
brighter on a grey radiograph, and its lowest entry is fully transparent so the image shows
through where the model sees nothing. Segment colours are fixed per name so a structure keeps its
colour between images and sessions.
"""

from __future__ import annotations

import colorsys
import zlib

RGBA = tuple[float, float, float, float]

#: (position 0..1, r, g, b) control points of the heatmap colour scale.
HEATMAP_CONTROL_POINTS: tuple[tuple[float, float, float, float], ...] = (
    (0.00, 0.00, 0.00, 0.00),
    (0.15, 0.35, 0.00, 0.05),
    (0.40, 0.85, 0.05, 0.05),
    (0.65, 1.00, 0.50, 0.00),
    (0.85, 1.00, 0.90, 0.10),
    (1.00, 1.00, 1.00, 0.85),
)

#: Colours for structures OrthoFM segments (RGB, 0..1).
NAMED_SEGMENT_COLORS: dict[str, tuple[float, float, float]] = {
    "femur": (0.85, 0.75, 0.55),
    "tibia": (0.90, 0.80, 0.60),
    "fibula": (0.80, 0.70, 0.50),
    "patella": (0.95, 0.85, 0.65),
    "bone": (0.89, 0.85, 0.79),
    "femoral_cartilage": (0.30, 0.70, 0.95),
    "tibial_cartilage": (0.20, 0.55, 0.90),
    "patellar_cartilage": (0.45, 0.80, 1.00),
    "cartilage": (0.30, 0.70, 0.95),
    "meniscus": (0.95, 0.55, 0.25),
    "medial_meniscus": (0.95, 0.55, 0.25),
    "lateral_meniscus": (0.90, 0.45, 0.20),
    "ligament": (0.60, 0.85, 0.35),
    "muscle": (0.75, 0.25, 0.25),
    "effusion": (0.35, 0.45, 0.95),
    "lesion": (1.00, 0.20, 0.60),
    "fracture": (1.00, 0.10, 0.10),
    "tumor": (0.70, 0.20, 0.85),
    "soft_tissue": (0.85, 0.55, 0.50),
}

_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.50, 0.68, 0.50), (0.95, 0.50, 0.20), (0.30, 0.55, 0.95), (0.95, 0.85, 0.25), (0.75, 0.35, 0.80),
    (0.25, 0.80, 0.80), (0.90, 0.30, 0.35), (0.55, 0.45, 0.30), (0.60, 0.85, 0.35), (0.95, 0.60, 0.75),
)


def heatmap_rgba(position: float) -> RGBA:
    """Colour of a normalised heatmap value (0..1); alpha rises from 0 to 1 over the first 15 %."""
    x = min(max(float(position), 0.0), 1.0)
    points = HEATMAP_CONTROL_POINTS
    for (x0, *c0), (x1, *c1) in zip(points, points[1:]):  # noqa: RUF007 (itertools.pairwise needs Python 3.10)
        if x <= x1:
            t = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
            rgb = tuple(a + (b - a) * t for a, b in zip(c0, c1))
            break
    else:
        rgb = tuple(points[-1][1:])
    alpha = min(1.0, x / 0.15)
    return (rgb[0], rgb[1], rgb[2], alpha)


def heatmap_table(size: int = 256) -> list[RGBA]:
    """The heatmap colour table (entry 0 transparent), ready for a Slicer vtkMRMLColorTableNode."""
    if size < 2:
        raise ValueError("A colour table needs at least 2 entries")
    return [heatmap_rgba(i / (size - 1)) for i in range(size)]


def segment_color(name: str, index: int = 0) -> tuple[float, float, float]:
    """A stable colour for a segment: named structures get theirs, others a palette entry."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key in NAMED_SEGMENT_COLORS:
        return NAMED_SEGMENT_COLORS[key]
    if index > 0:
        return _PALETTE[(index - 1) % len(_PALETTE)]
    hue = (zlib.crc32(key.encode("utf-8")) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.6, 0.9)
    return (r, g, b)
