"""Deterministic complementary MAE masks.

SKELEX draws 10 random masks per image, so some pixels are never masked (their error stays 0) and the map
changes from run to run. Here pass ``k`` keeps the patches of one sub-lattice of the patch grid visible
(for mask ratio 0.75: the four 2x2 phases), so the visible sets partition the grid: every patch is masked
in all passes but one, every masked patch has visible neighbours, and the map is reproducible.
MAE implementations (HF ViTMAE, OrthoFM's decoder) keep the ``n_keep`` patches of lowest ``noise``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["complementary_noise", "lattice_partition", "passes_for_ratio"]


def passes_for_ratio(mask_ratio: float) -> int:
    """Number of complementary passes: 1 / visible fraction (4 for the usual 0.75), at least 2."""
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask ratio must be in (0, 1), got {mask_ratio}")
    return max(2, round(1.0 / (1.0 - mask_ratio)))


def lattice_partition(grid: tuple[int, int], n_sets: int) -> torch.Tensor:
    """Set id (0..n_sets-1) of every patch of an (h, w) grid, row-major (L,), spread as a regular lattice.

    A square ``n_sets`` = s*s uses the s x s phases (every s-th row and column); other counts use a
    diagonal lattice ``(col + row * ceil(sqrt(n))) % n``.
    """
    h, w = grid
    if n_sets < 1:
        raise ValueError(f"n_sets must be >= 1, got {n_sets}")
    rows = torch.arange(h).unsqueeze(1).expand(h, w)
    cols = torch.arange(w).unsqueeze(0).expand(h, w)
    s = math.isqrt(n_sets)
    if s * s == n_sets:
        ids = (rows % s) * s + (cols % s)
    else:
        ids = (cols + rows * math.ceil(math.sqrt(n_sets))) % n_sets
    return ids.reshape(-1)


def complementary_noise(grid: tuple[int, int], n_passes: int, *, seed: int = 0) -> torch.Tensor:
    """(n_passes, L) noise: in pass k the patches of lattice set k get the lowest noise (kept visible).

    Ties inside a set are broken by a seeded permutation, which only matters when a set holds more
    patches than the model keeps (grids not divisible by the lattice).
    """
    ids = lattice_partition(grid, n_passes)
    gen = torch.Generator().manual_seed(seed)
    jitter = torch.rand(n_passes, ids.numel(), generator=gen)
    visible = ids.unsqueeze(0) == torch.arange(n_passes).unsqueeze(1)
    return torch.where(visible, jitter, 1.0 + jitter)
