"""Voxel geometry: IJK <-> RAS mappings and their NRRD header fields.

Slicer places every volume with a 4x4 IJK-to-RAS matrix. Files (NRRD, DICOM, ITK) usually store the
same information in LPS (left-posterior-superior). Keeping one small class that converts between the
two is what lets a heatmap computed on the server land exactly on the volume that was sent.

Arrays in this package follow Slicer's ``arrayFromVolume`` order: ``(K, J, I)`` (slowest axis first),
so a NRRD with ``sizes: I J K`` maps to a C-ordered NumPy array of shape ``(K, J, I)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import OrthoFMFormatError

#: Multiplying a vector by this flips LPS <-> RAS (the conversion is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

_SPACE_TO_RAS = {
    "left-posterior-superior": np.diag([-1.0, -1.0, 1.0]),
    "lps": np.diag([-1.0, -1.0, 1.0]),
    "right-anterior-superior": np.eye(3),
    "ras": np.eye(3),
    "left-anterior-superior": np.diag([-1.0, 1.0, 1.0]),
    "las": np.diag([-1.0, 1.0, 1.0]),
    # ITK and Slicer read these as LPS as well.
    "scanner-xyz": np.diag([-1.0, -1.0, 1.0]),
    "3d-right-handed": np.diag([-1.0, -1.0, 1.0]),
}


def space_to_ras_matrix(space: str) -> np.ndarray:
    """3x3 matrix taking a vector in the NRRD ``space`` to RAS."""
    key = space.strip().lower()
    if key not in _SPACE_TO_RAS:
        raise OrthoFMFormatError(
            f"Unsupported NRRD space '{space}'; expected left-posterior-superior (LPS) or "
            "right-anterior-superior (RAS)."
        )
    return _SPACE_TO_RAS[key]


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of a 3-D grid sit in patient space (RAS, millimetres).

    ``directions`` holds unit column vectors: column ``n`` is the RAS direction of array axis I, J, K
    for ``n`` = 0, 1, 2. ``spacing`` is per I, J, K and ``origin`` is the RAS centre of voxel (0, 0, 0).
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    directions: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError(f"Geometry needs 3 spacings and a 3-D origin, got {self.spacing}, {self.origin}")
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"Voxel spacing must be positive and finite, got {self.spacing}")
        d = np.asarray(self.directions, dtype=float)
        if d.shape != (3, 3) or not np.all(np.isfinite(d)):
            raise ValueError(f"Direction matrix must be a finite 3x3 matrix, got {self.directions}")
        if abs(np.linalg.det(d)) < 1e-6:
            raise ValueError("Direction matrix is singular: two image axes point the same way")

    # ----------------------------------------------------------------------------------------- builders
    @classmethod
    def from_ijk_to_ras(cls, matrix: Sequence[Sequence[float]] | np.ndarray) -> Geometry:
        """From Slicer's ``GetIJKToRASMatrix`` (as a 4x4 array)."""
        m = np.asarray(matrix, dtype=float)
        if m.shape != (4, 4):
            raise ValueError(f"IJK-to-RAS must be 4x4, got shape {m.shape}")
        columns = m[:3, :3]
        spacing = np.linalg.norm(columns, axis=0)
        if np.any(spacing <= 0):
            raise ValueError("IJK-to-RAS has a zero-length axis")
        return cls(_tuple3(spacing), _tuple3(m[:3, 3]), _matrix_tuple(columns / spacing))

    @classmethod
    def from_lps(cls, spacing: Sequence[float], origin: Sequence[float],
                 direction: Sequence[Sequence[float]] | np.ndarray | None = None) -> Geometry:
        """From ITK/DICOM conventions: LPS origin and a direction matrix whose columns are the axes."""
        d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
        return cls(_tuple3(spacing), _tuple3(LPS_TO_RAS @ np.asarray(origin, dtype=float)),
                   _matrix_tuple(LPS_TO_RAS @ d))

    @classmethod
    def from_space_directions(cls, space: str, directions: Sequence[Sequence[float]],
                              origin: Sequence[float] | None) -> Geometry:
        """From NRRD ``space directions`` (one scaled vector per spatial axis) and ``space origin``."""
        to_ras = space_to_ras_matrix(space)
        vectors = np.asarray(directions, dtype=float)
        if vectors.shape != (3, 3):
            raise OrthoFMFormatError(f"NRRD space directions must be three 3-D vectors, got {directions}")
        columns = to_ras @ vectors.T
        spacing = np.linalg.norm(columns, axis=0)
        if np.any(spacing <= 0):
            raise OrthoFMFormatError("NRRD space directions contain a zero vector")
        o = np.zeros(3) if origin is None else to_ras @ np.asarray(origin, dtype=float)
        return cls(_tuple3(spacing), _tuple3(o), _matrix_tuple(columns / spacing))

    # ----------------------------------------------------------------------------------------- views
    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.directions, dtype=float)

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix, the one Slicer's ``SetIJKToRASMatrix`` expects."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * np.asarray(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras())

    def ijk_to_lps(self) -> np.ndarray:
        m = self.ijk_to_ras()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    def origin_lps(self) -> tuple[float, float, float]:
        return _tuple3(LPS_TO_RAS @ np.asarray(self.origin))

    def direction_lps(self) -> np.ndarray:
        return LPS_TO_RAS @ self.direction_matrix

    def nrrd_space_fields(self) -> dict[str, str]:
        """The NRRD header fields (LPS, as Slicer and ITK write them) that carry this geometry."""
        m = self.ijk_to_lps()
        vectors = " ".join(_vec(m[:3, n]) for n in range(3))
        return {"space": "left-posterior-superior", "space directions": vectors,
                "space origin": _vec(m[:3, 3])}

    def is_close(self, other: Geometry, *, atol: float = 1e-5) -> bool:
        """True when both map every voxel to the same RAS point within ``atol`` (mm per unit index)."""
        return bool(np.allclose(self.ijk_to_ras(), other.ijk_to_ras(), atol=atol, rtol=0.0))

    def max_difference(self, other: Geometry) -> float:
        return float(np.max(np.abs(self.ijk_to_ras() - other.ijk_to_ras())))


def _tuple3(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    v = [float(x) for x in np.asarray(values, dtype=float).reshape(-1)]
    if len(v) != 3:
        raise ValueError(f"Expected 3 values, got {v}")
    return (v[0], v[1], v[2])


def _matrix_tuple(m: np.ndarray) -> tuple[tuple[float, float, float], ...]:
    return tuple(_tuple3(row) for row in np.asarray(m, dtype=float))


def _vec(v: Sequence[float]) -> str:
    return "(" + ",".join(repr(float(x)) for x in v) + ")"
