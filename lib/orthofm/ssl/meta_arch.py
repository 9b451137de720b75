"""Student/teacher wiring for OrthoFM pretraining: which losses run, EMA, parameter groups.

``forward(batch)`` returns the losses so the whole student can be wrapped in DDP and trained by the
same loop on one CPU or many GPUs. Each objective is switched on by the config alone.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from orthofm.models import Backbone
from orthofm.models.mae_decoder import patchify

from .config import PretrainConfig
from .dino_head import DINOHead
from .losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, mae_loss


class SSLMetaArch(nn.Module):
    def __init__(self, config: PretrainConfig, backbone: Backbone) -> None:
        super().__init__()
        self.config = config
        self.do_mae = "mae" in config.objective
        self.do_dino = "dino" in config.objective
        if not (self.do_mae or self.do_dino):
            raise ValueError(f"objective must contain 'mae' and/or 'dino', got {config.objective!r}")
        if self.do_mae and not backbone.has_mae_decoder:
            raise ValueError("the MAE objective needs a backbone built with an MAE decoder")
        self.student = backbone
        if self.do_dino:
            d = config.dino
            self.do_ibot = d.ibot_weight > 0
            self.do_koleo = d.koleo_weight > 0
            self.student_head = DINOHead(backbone.embed_dim, d.out_dim, d.hidden_dim, d.bottleneck_dim)
            teacher_backbone = copy.deepcopy(backbone)
            teacher_backbone.mae_decoder = None  # the teacher never reconstructs
            self.teacher = nn.ModuleDict({"backbone": teacher_backbone, "head": copy.deepcopy(self.student_head)})
            for p in self.teacher.parameters():
                p.requires_grad = False
            self.dino_loss = DINOLoss(d.out_dim, centering=d.centering, center_start=d.center_start)
            if self.do_ibot:
                self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
                nn.init.normal_(self.mask_token, std=0.02)
                self.ibot_loss = IBOTPatchLoss(d.out_dim, centering=d.centering, center_start=d.center_start)
            if self.do_koleo:
                self.koleo_loss = KoLeoLoss()

    # -- losses --------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], teacher_temp: float = 0.04) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        if self.do_mae:
            x = batch["mae"]
            pred, mask, _ = self.student.mae_forward(x, self.config.mask_ratio)
            target = patchify(x[:, : self.student.config.mae_decoder.out_chans], self.student.patch_size)
            losses["mae"] = mae_loss(pred, target, mask, norm_pix=self.config.norm_pix_loss)
        if self.do_dino:
            losses.update(self._dino_losses(batch["global"], batch.get("local", []), teacher_temp))
        losses["loss"] = sum(
            v * (self.config.dino.ibot_weight if k == "ibot" else self.config.dino.koleo_weight if k == "koleo" else 1.0)
            for k, v in losses.items()
        )
        return losses

    def _dino_losses(
        self, globals_: list[torch.Tensor], locals_: list[torch.Tensor], teacher_temp: float
    ) -> dict[str, torch.Tensor]:
        b = globals_[0].shape[0]
        g = torch.cat(globals_)
        with torch.no_grad():
            t_tokens, _ = self.teacher["backbone"]._tokens(g)
            p = self.student.num_prefix_tokens
            t_cls = self.teacher["head"](t_tokens[:, 0]).chunk(len(globals_))
        patch_mask = None
        if self.do_ibot:
            patch_mask = self._ibot_mask(g)
        s_tokens, _ = self.student._tokens(
            g, patch_mask=patch_mask, mask_token=getattr(self, "mask_token", None)
        )
        s_out = list(self.student_head(s_tokens[:, 0]).chunk(len(globals_)))
        if locals_:
            loc = torch.cat(locals_)
            l_tokens, _ = self.student._tokens(loc)
            s_out += list(self.student_head(l_tokens[:, 0]).chunk(len(locals_)))
        out = {"dino": self.dino_loss(s_out, list(t_cls), teacher_temp)}
        if self.do_ibot:
            with torch.no_grad():
                t_patch = self.teacher["head"](t_tokens[:, p:])
            s_patch = self.student_head(s_tokens[:, p:])
            out["ibot"] = self.ibot_loss(s_patch, t_patch, patch_mask, teacher_temp)
        if self.do_koleo:
            out["koleo"] = sum(self.koleo_loss(c) for c in s_tokens[:, 0].split(b)) / len(globals_)
        return out

    def _ibot_mask(self, images: torch.Tensor) -> torch.Tensor:
        """Mask a random 10-50 % of patches in half of the global crops."""
        ps = self.student.patch_size
        n, length = images.shape[0], (images.shape[-2] // ps) * (images.shape[-1] // ps)
        lo, hi = self.config.dino.ibot_mask_ratio
        ratios = lo + (hi - lo) * torch.rand(n)
        ratios[torch.rand(n) < 0.5] = 0.0
        ranks = torch.rand(n, length).argsort(dim=1).argsort(dim=1)
        return ranks < (ratios * length).long().unsqueeze(1)

    # -- teacher -------------------------------------------------------------------------------
    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        if not self.do_dino:
            return
        pairs = [(self.student, self.teacher["backbone"]), (self.student_head, self.teacher["head"])]
        for student, teacher in pairs:
            s_params = dict(student.named_parameters())
            for name, t_param in teacher.named_parameters():
                if name in s_params:
                    t_param.mul_(momentum).add_(s_params[name].detach(), alpha=1 - momentum)

    def export_backbone(self) -> Backbone:
        """What the run produces: the EMA teacher for DINO runs (plus the student's MAE decoder when
        trained), the student otherwise."""
        if not self.do_dino:
            return self.student
        exported = copy.deepcopy(self.teacher["backbone"])
        exported.mae_decoder = copy.deepcopy(self.student.mae_decoder)
        return exported

    def param_groups(self, weight_decay: float) -> list[dict]:
        """No weight decay on biases, norms, tokens and layer scales (1-D tensors)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith("token") or "gamma" in name else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
