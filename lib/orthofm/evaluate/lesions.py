"""Synthetic lesions of known position and size, inserted into real normal radiographs.

No redistributable MSK set has pixel masks of real lesions, so pixel-level heatmap metrics are measured
on normal images with defects drawn in: lytic / sclerotic intensity changes, loss or disruption of the
trabecular texture, and cortical breaks drawn as thin dark lines. Each inserter returns the new image and
the ground-truth mask (where the defect changes the image by at least half its full strength). Amplitudes
are fractions of the image's robust intensity range, so they mean the same on 8-bit PNGs and 12-bit DICOMs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "KINDS",
    "LesionSpec",
    "SyntheticLesionImage",
    "default_placement_mask",
    "insert_cortical_break",
    "insert_intensity_defect",
    "insert_lesion",
    "insert_texture_defect",
    "random_lesions",
]

KINDS = ("intensity", "texture", "break")


@dataclass(frozen=True)
class LesionSpec:
    """One defect: ``center`` (row, col) in pixels; ``size`` = radius (blobs) or length (breaks) in pixels."""

    kind: str
    center: tuple[float, float]
    size: float
    strength: float
    angle: float = 0.0
    aspect: float = 1.0
    width: float = 2.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SyntheticLesionImage:
    image: np.ndarray
    mask: np.ndarray
    lesions: list[LesionSpec] = field(default_factory=list)


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"synthetic lesions need a 2D image, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values")
    return arr.astype(np.float32)


def _robust_range(arr: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(arr, [1, 99])
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise ValueError("image is constant: no intensity range to scale a lesion to")
    return float(lo), float(hi)


def _blob_profile(
    shape: tuple[int, int], center: Sequence[float], radius: float, aspect: float, angle: float
):
    """Smooth elliptical bump: 1 inside 0.6 R, raised-cosine fall-off to 0 at R."""
    if radius <= 0:
        raise ValueError(f"lesion radius must be > 0, got {radius}")
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dr, dc = rr - center[0], cc - center[1]
    ca, sa = np.cos(angle), np.sin(angle)
    u = (dc * ca + dr * sa) / (radius * aspect)
    v = (-dc * sa + dr * ca) / radius
    d = np.sqrt(u * u + v * v)
    t = np.clip((d - 0.6) / 0.4, 0.0, 1.0)
    return (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)


def insert_intensity_defect(
    image: np.ndarray,
    center: Sequence[float],
    radius: float,
    *,
    strength: float = -0.3,
    aspect: float = 1.0,
    angle: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Darker (lytic, ``strength`` < 0) or brighter (sclerotic, > 0) blob; strength in robust-range units."""
    arr = _check_image(image)
    lo, hi = _robust_range(arr)
    prof = _blob_profile(arr.shape, center, radius, aspect, angle)
    out = arr + strength * (hi - lo) * prof
    return np.clip(out, arr.min(), arr.max()).astype(np.float32), prof >= 0.5


def insert_texture_defect(
    image: np.ndarray,
    center: Sequence[float],
    radius: float,
    *,
    strength: float = 0.25,
    aspect: float = 1.0,
    angle: float = 0.0,
    seed: int = 0,
    grain: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Replace the local texture by the blurred local mean plus coarse foreign noise of ``strength``."""
    arr = _check_image(image)
    lo, hi = _robust_range(arr)
    prof = _blob_profile(arr.shape, center, radius, aspect, angle)
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(arr.shape).astype(np.float32), grain)
    noise /= noise.std() + 1e-8
    base = ndimage.gaussian_filter(arr, max(radius / 3.0, 1.0))
    out = (1 - prof) * arr + prof * (base + strength * (hi - lo) * noise)
    return np.clip(out, arr.min(), arr.max()).astype(np.float32), prof >= 0.5


def insert_cortical_break(
    image: np.ndarray,
    center: Sequence[float],
    length: float,
    *,
    angle: float = 0.0,
    width: float = 2.0,
    depth: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    """Thin dark line (a fracture / cortical break): pixels within ``width``/2 of the segment are pulled
    ``depth`` of the way down to the image's dark level, with a one-pixel anti-aliased edge."""
    arr = _check_image(image)
    if length <= 0 or width <= 0:
        raise ValueError(f"break length and width must be > 0, got {length} and {width}")
    lo, _ = _robust_range(arr)
    rr, cc = np.mgrid[0 : arr.shape[0], 0 : arr.shape[1]].astype(np.float32)
    dr, dc = rr - center[0], cc - center[1]
    ca, sa = np.cos(angle), np.sin(angle)
    along = dc * ca + dr * sa
    across = -dc * sa + dr * ca
    beyond = np.clip(np.abs(along) - length / 2, 0, None)
    dist = np.sqrt(across**2 + beyond**2)
    prof = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0).astype(np.float32)
    out = arr - prof * depth * np.clip(arr - lo, 0, None)
    return out.astype(np.float32), prof >= 0.5


def insert_lesion(image: np.ndarray, spec: LesionSpec) -> tuple[np.ndarray, np.ndarray]:
    """Insert one lesion described by ``spec``."""
    if spec.kind == "intensity":
        return insert_intensity_defect(
            image, spec.center, spec.size, strength=spec.strength, aspect=spec.aspect, angle=spec.angle
        )
    if spec.kind == "texture":
        return insert_texture_defect(
            image,
            spec.center,
            spec.size,
            strength=spec.strength,
            aspect=spec.aspect,
            angle=spec.angle,
            seed=spec.seed,
        )
    if spec.kind == "break":
        return insert_cortical_break(
            image, spec.center, spec.size, angle=spec.angle, width=spec.width, depth=spec.strength
        )
    raise ValueError(f"unknown lesion kind {spec.kind!r}; choose from {KINDS}")


def default_placement_mask(image: np.ndarray, margin: int, quantile: float = 0.5) -> np.ndarray:
    """Where lesions may go: bright (bone) pixels above ``quantile`` of the smoothed image, off the border."""
    arr = _check_image(image)
    smooth = ndimage.gaussian_filter(arr, 2.0)
    ok = smooth >= np.quantile(smooth, quantile)
    if margin > 0:
        ok[:margin] = ok[-margin:] = False
        ok[:, :margin] = ok[:, -margin:] = False
    return ok


def random_lesions(
    image: np.ndarray,
    *,
    n: int = 1,
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    radius_range: tuple[float, float] = (0.04, 0.09),
    length_range: tuple[float, float] = (0.12, 0.25),
    where: np.ndarray | None = None,
    max_tries: int = 50,
) -> SyntheticLesionImage:
    """Insert ``n`` non-overlapping lesions of random kind, place, size and strength (all from ``seed``).

    Sizes are fractions of the image's short side, so the same settings suit 224-px crops and full CRs.
    ``where`` (bool, image shape) restricts lesion centres; the default keeps them on bright bone.
    """
    arr = _check_image(image)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown lesion kind {k!r}; choose from {KINDS}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    short = min(arr.shape)
    margin = int(np.ceil(radius_range[1] * short)) + 1
    allowed = default_placement_mask(arr, margin) if where is None else np.asarray(where, dtype=bool).copy()
    if allowed.shape != arr.shape:
        raise ValueError(f"placement mask shape {allowed.shape} differs from image shape {arr.shape}")
    candidates = np.argwhere(allowed)
    if candidates.size == 0:
        raise ValueError("no allowed pixel to place a lesion (placement mask is empty)")
    out, mask, specs = arr, np.zeros(arr.shape, dtype=bool), []
    for _ in range(n):
        for _ in range(max_tries):
            kind = str(rng.choice(list(kinds)))
            r, c = candidates[rng.integers(len(candidates))]
            angle = float(rng.uniform(0, np.pi))
            if kind == "break":
                spec = LesionSpec(
                    kind,
                    (float(r), float(c)),
                    float(rng.uniform(*length_range) * short),
                    float(rng.uniform(0.6, 0.9)),
                    angle=angle,
                    width=float(rng.uniform(1.5, 3.0)),
                )
            else:
                strength = float(rng.uniform(0.2, 0.4))
                if kind == "intensity" and rng.random() < 0.5:
                    strength = -strength
                spec = LesionSpec(
                    kind,
                    (float(r), float(c)),
                    float(rng.uniform(*radius_range) * short),
                    strength,
                    angle=angle,
                    aspect=float(rng.uniform(0.6, 1.0)),
                    seed=int(rng.integers(2**31)),
                )
            new, m = insert_lesion(out, spec)
            if m.any() and not (m & ndimage.binary_dilation(mask, iterations=2)).any():
                out, mask = new, mask | m
                specs.append(spec)
                break
        else:
            raise ValueError(
                f"could not place lesion {len(specs) + 1} of {n} without overlap in {max_tries} tries"
            )
    return SyntheticLesionImage(image=out, mask=mask, lesions=specs)
