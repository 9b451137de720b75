"""Detect a DINO run that learns nothing: the loss pinned at ln(K).

The cross-entropy -sum(t * log s) equals ln(K) for K prototypes whenever the *student* distribution is
uniform, whatever the teacher does ("uniform collapse"). Measured on OrthoFM's stage-2/3 runs: the student's
prototypes (trained from step 0) turned away from the direction every image's bottleneck shares, so the student
could go uniform by moving all images into it; the teacher followed through the EMA. The fixes are the published
recipe's: prototypes frozen for the first epoch and the centre started at the first batch's mean. The loss curve
looks flat rather than broken, so the loop still warns.
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
