"""Sinkhorn-Knopp teacher targets: the alternative to EMA centring for small batches (as in SwAV and DINOv2).

EMA centring subtracts a running mean of the teacher's logits, which needs large batches to estimate; at the
batch sizes a CPU affords (32 here) the estimate is noisy and the teacher drifts towards uniform targets, the
collapse measured in docs/pretraining.md. Sinkhorn-Knopp instead rescales the teacher's (B, K) assignment
matrix until every prototype receives the same share of the batch and every sample a full distribution, so
the targets stay sharp and spread over the prototypes by construction. Under DDP the sums are all-reduced,
so every rank computes the targets of the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..config import CENTER_STARTS, CENTERINGS

__all__ = ["CentredDistillationLoss", "sinkhorn_knopp"]


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """(B, K) teacher logits -> (B, K) targets: rows sum to 1, each prototype's column to about B / K.

    The logits of OrthoFM's DINO head are cosines (weight-normed prototypes, L2-normalised bottleneck), so
    ``exp(logit / T)`` cannot overflow; the global maximum is still subtracted, which changes nothing after the
    normalisations. An empty batch (no masked patch on any rank) gives an empty result.
    """
    x = logits.float()
    local_max = x.max() if x.numel() else torch.tensor(-torch.inf, device=x.device)
    top = _all_reduce(local_max.clone(), dist.ReduceOp.MAX if dist.is_available() else None)
    q = torch.exp((x - top) / temperature).t()  # (K, B)
    k = q.shape[0]
    n = _all_reduce(torch.tensor([float(q.shape[1])], device=q.device))
    if n.item() == 0:
        return q.t()
    q /= _all_reduce(q.sum()).clamp_min(torch.finfo(q.dtype).tiny)
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True)).clamp_min(torch.finfo(q.dtype).tiny) * k  # equal prototype mass
        q /= q.sum(dim=0, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny) * n  # each sample: a distribution
    return (q * n).t()


class CentredDistillationLoss(nn.Module):
    """What the DINO (CLS) and iBOT (patch) losses share: the student temperature and the teacher's centring.

    ``centering="ema"`` keeps an EMA ``center`` of the teacher's logits (all-reduced under DDP);
    ``"sinkhorn"`` makes the targets with :func:`sinkhorn_knopp` and leaves the centre unused.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema", center_start: str = "first_batch") -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        if center_start not in CENTER_STARTS:
            raise ValueError(f"center_start must be one of {CENTER_STARTS}, got {center_start!r}")
        self.centering = centering
        self.center_start = center_start
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def start_center(self, teacher_logits: torch.Tensor) -> None:
        """First step only: centre on this batch, not on 0 (see :meth:`update_center`); ``center_start="zero"``
        keeps the zero start of the recipe before that fix."""
        if self.center_start == "first_batch" and not bool(self.center.any()):
            self.update_center(teacher_logits, momentum=0.0)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor, momentum: float | None = None) -> None:
        """EMA of the teacher's batch-mean logits. The first call starts it at the batch mean (momentum 0): a
        zero centre leaves the teacher uncentred for ~20 steps (0.9^20 = 12 %), every image gets the same sharp
        target, and a fresh head learns that one target at once (measured: the start of uniform collapse)."""
        m = self.center_momentum if momentum is None else momentum
        total = _all_reduce(teacher_logits.float().sum(dim=0, keepdim=True))
        count = _all_reduce(torch.tensor([max(teacher_logits.shape[0], 1)], dtype=torch.float32,
                                         device=total.device))
        self.center.mul_(m).add_(total / count * (1 - m))
