"""iBOT masked-patch self-distillation: the student predicts the teacher's patch prototypes
for patches it could not see (Zhou et al. 2022), written for OrthoFM."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class IBOTPatchLoss(nn.Module):
    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_patches: torch.Tensor, teacher_patches: torch.Tensor, mask: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """Patch logits (B, L, K) for student (masked input) and teacher (full input); ``mask`` (B, L) bool."""
        t = F.softmax((teacher_patches.float() - self.center) / teacher_temp, dim=-1).detach()
        s = F.log_softmax(student_patches.float() / self.student_temp, dim=-1)
        per_patch = torch.sum(-t * s, dim=-1)
        m = mask.float()
        loss = ((per_patch * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)).mean()
        self.update_center(teacher_patches[mask])
        return loss

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        total = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor([max(teacher_logits.shape[0], 1)], dtype=torch.float32, device=total.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(total / count * (1 - self.center_momentum))
