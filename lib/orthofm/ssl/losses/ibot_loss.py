"""iBOT masked-patch self-distillation: the student predicts the teacher's patch prototypes
for patches it could not see (Zhou et al. 2022), written for OrthoFM."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import CENTERINGS
from .centering import sinkhorn_knopp


class IBOTPatchLoss(nn.Module):
    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema") -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.centering = centering
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_patches: torch.Tensor, teacher_patches: torch.Tensor, mask: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """Patch logits (B, L, K) for student (masked input) and teacher (full input); ``mask`` (B, L) bool."""
        m = mask.float()
        if self.centering == "sinkhorn":  # targets only for the masked patches, balanced over all of them
            t = sinkhorn_knopp(teacher_patches[mask], teacher_temp)
            s = F.log_softmax(student_patches[mask].float() / self.student_temp, dim=-1)
            per_patch = torch.sum(-t * s, dim=-1)
            weight = (1.0 / m.sum(dim=-1).clamp_min(1.0)).unsqueeze(1).expand_as(m)[mask]  # mean per image
            return (per_patch * weight).sum() / mask.shape[0]
        if not bool(self.center.any()):  # first step: centre on this batch, not on 0 (see update_center)
            self.update_center(teacher_patches[mask], momentum=0.0)
        t = F.softmax((teacher_patches.float() - self.center) / teacher_temp, dim=-1).detach()
        s = F.log_softmax(student_patches.float() / self.student_temp, dim=-1)
        per_patch = torch.sum(-t * s, dim=-1)
        loss = ((per_patch * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)).mean()
        self.update_center(teacher_patches[mask])
        return loss

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor, momentum: float | None = None) -> None:
        """EMA of the teacher's batch-mean logits. The first call starts it at the batch mean (momentum 0): a
        zero centre leaves the teacher uncentred for ~20 steps (0.9^20 = 12 %), every image gets the same sharp
        target, and a fresh head learns that one target at once (measured: the start of uniform collapse)."""
        m = self.center_momentum if momentum is None else momentum
        total = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor([max(teacher_logits.shape[0], 1)], dtype=torch.float32, device=total.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(m).add_(total / count * (1 - m))
