"""Masked-autoencoder reconstruction loss (mean squared error on masked patches only)."""

from __future__ import annotations

import torch


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    """``pred``/``target`` (B, L, P), ``mask`` (B, L) with 1 = masked. Visible patches carry no loss."""
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
