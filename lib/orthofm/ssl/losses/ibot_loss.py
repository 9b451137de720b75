"""iBOT masked-patch self-distillation: the student predicts the teacher's patch prototypes
for patches it could not see (Zhou et al. 2022), written for OrthoFM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .centering import CentredDistillationLoss, sinkhorn_knopp


class IBOTPatchLoss(CentredDistillationLoss):
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
        self.start_center(teacher_patches[mask])
        t = F.softmax((teacher_patches.float() - self.center) / teacher_temp, dim=-1).detach()
        s = F.log_softmax(student_patches.float() / self.student_temp, dim=-1)
        per_patch = torch.sum(-t * s, dim=-1)
        loss = ((per_patch * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)).mean()
        self.update_center(teacher_patches[mask])
        return loss
