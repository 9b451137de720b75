"""DINO self-distillation loss on the CLS token (Caron et al. 2021), written for OrthoFM.

Teacher outputs are centred (EMA of the batch mean) and sharpened with a low temperature; the student
is trained to match them across views. The centre is all-reduced under DDP so every rank agrees.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import CENTERINGS
from .centering import sinkhorn_knopp


class DINOLoss(nn.Module):
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
        if not bool(self.center.any()):  # first step: centre on this batch, not on 0 (see update_center)
            self.update_center(torch.cat(teacher_out), momentum=0.0)
        return [F.softmax((t.float() - self.center) / teacher_temp, dim=-1) for t in teacher_out]

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor, momentum: float | None = None) -> None:
        """EMA of the teacher's batch-mean logits. The first call starts it at the batch mean (momentum 0): a
        zero centre leaves the teacher uncentred for ~20 steps (0.9^20 = 12 %), every image gets the same sharp
        target, and a fresh head learns that one target at once (measured: the start of uniform collapse)."""
        m = self.center_momentum if momentum is None else momentum
        batch_center = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_logits.shape[0]], dtype=torch.float32, device=teacher_logits.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(m).add_(batch_center * (1 - m))
