"""Detect a DINO run that learns nothing: the loss pinned at ln(K).

When every image maps to (almost) the same head output, centring makes the teacher distribution uniform
and the DINO cross-entropy sits at exactly ln(K) for K prototypes, whatever the student does ("uniform
collapse"). It happens e.g. when continuing from MAE weights, whose CLS token was never trained and is
nearly the same for every image. The loss curve looks flat rather than broken, so the loop warns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["dino_uniform_collapse"]


def dino_uniform_collapse(recent_losses: Sequence[float], out_dim: int, *, window: int = 10,
                          tolerance: float = 2e-3) -> bool:
    """True when the last ``window`` DINO losses are all within ``tolerance`` (relative) of ln(out_dim)."""
    if out_dim < 2:
        raise ValueError(f"out_dim must be >= 2, got {out_dim}")
    if len(recent_losses) < window:
        return False
    uniform = math.log(out_dim)
    return all(abs(v - uniform) <= tolerance * uniform for v in recent_losses[-window:])
