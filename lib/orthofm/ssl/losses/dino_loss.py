"""DINO self-distillation loss on the CLS token (Caron et al. 2021), written for OrthoFM.

Teacher outputs are centred (EMA of the batch mean) and sharpened with a low temperature; the student
is trained to match them across views. The centre is all-reduced under DDP so every rank agrees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .centering import CentredDistillationLoss, sinkhorn_knopp


class DINOLoss(CentredDistillationLoss):
    def forward(
        self, student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], teacher_temp: float
    ) -> torch.Tensor:
        """``student_out``: logits per crop (all crops); ``teacher_out``: logits per global crop."""
        teacher_probs = self.teacher_targets(teacher_out, teacher_temp)
        total, pairs = 0.0, 0
        for ti, tp in enumerate(teacher_probs):
            for si, s in enumerate(student_out):
                if si == ti:  # the same view seen by both networks teaches nothing
                    continue
                total = total + torch.sum(-tp * F.log_softmax(s.float() / self.student_temp, dim=-1), dim=-1).mean()
                pairs += 1
        if self.centering == "ema":
            self.update_center(torch.cat(teacher_out))
        return total / max(pairs, 1)

    @torch.no_grad()
    def teacher_targets(self, teacher_out: list[torch.Tensor], teacher_temp: float) -> list[torch.Tensor]:
        """Per global crop, the teacher's target distribution: EMA-centred softmax, or Sinkhorn-Knopp over
        all global crops of the batch together (every prototype gets an equal share)."""
        if self.centering == "sinkhorn":
            return list(sinkhorn_knopp(torch.cat(teacher_out), teacher_temp).split([len(t) for t in teacher_out]))
        self.start_center(torch.cat(teacher_out))
        return [F.softmax((t.float() - self.center) / teacher_temp, dim=-1) for t in teacher_out]
