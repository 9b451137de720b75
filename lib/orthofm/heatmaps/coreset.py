"""Greedy k-centre coreset (PatchCore): keep the patches that best cover the normal feature space.

A memory bank of every normal patch (1,000 knees x 196 patches x 384 dims = 300 MB) is too large to ship
and slow to search; the greedy k-centre subset keeps the farthest-point cover, so the nearest-neighbour
distance of any normal patch grows by at most the coverage radius. Distances are computed on a random
Gaussian (Johnson-Lindenstrauss) projection to ``projection_dim`` dimensions for speed.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

__all__ = ["greedy_coreset"]

log = logging.getLogger(__name__)


@torch.no_grad()
def greedy_coreset(
    features: np.ndarray, n_select: int, *, projection_dim: int = 128, seed: int = 0
) -> np.ndarray:
    """Indices (n_select,) of a greedy k-centre cover of ``features`` (N, D), in selection order."""
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"coreset needs a non-empty (N, D) feature matrix, got shape {feats.shape}")
    n = feats.shape[0]
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select must be in [1, {n}], got {n_select}")
    if n_select == n:
        return np.arange(n)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(feats)
    if projection_dim and projection_dim < feats.shape[1]:
        proj = torch.randn(feats.shape[1], projection_dim, generator=gen) / projection_dim**0.5
        x = x @ proj
    sq = (x * x).sum(dim=1)
    first = int(torch.randint(n, (1,), generator=gen))
    selected = np.empty(n_select, dtype=np.int64)
    selected[0] = first
    min_d = sq - 2 * (x @ x[first]) + sq[first]
    t0, last_log = time.monotonic(), time.monotonic()
    for i in range(1, n_select):
        nxt = int(torch.argmax(min_d))
        selected[i] = nxt
        min_d = torch.minimum(min_d, sq - 2 * (x @ x[nxt]) + sq[nxt])
        if time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            rate = i / (last_log - t0)
            log.info("coreset %d/%d (%.0f/s, ETA %.0f s)", i, n_select, rate, (n_select - i) / rate)
    return selected
