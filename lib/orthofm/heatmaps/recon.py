"""SKELEX-style reconstruction-error maps from any MAE-capable backbone.

The backbone only has to offer ``mae_reconstruct(x, noise) -> (pred (B, L, p*p*C), mask (B, L))``
(1 = masked): the imported SKELEX ``ViTMAEForPreTraining`` (C = 3, ImageNet-normalised target) and
OrthoFM's own decoder (C = 1, target = channel 0 of the normalised input) both do. The error is the squared
difference in de-normalised pixel units ([0, 1] scale, like SKELEX), averaged over channels, counted only
where the patch was masked, and averaged per pixel over the passes that masked it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.mae_decoder import patchify, unpatchify
from .masks import complementary_noise, passes_for_ratio

__all__ = ["ReconConfig", "ReconMaps", "backbone_mask_ratio", "reconstruction_error"]


@dataclass
class ReconConfig:
    mask_ratio: float | None = None  # None: read from the backbone (0.75 if it does not say)
    n_passes: int | None = None  # None: complementary passes, 1 / (1 - mask_ratio)
    seed: int = 0
    batch_size: int = 16  # images x passes per backbone call
    norm_pix: bool | None = None  # None: read ``norm_pix_loss`` from the backbone


@dataclass
class ReconMaps:
    pixel: torch.Tensor  # (B, H, W) mean squared error per pixel at the prepared grid
    patch: torch.Tensor  # (B, h, w) mean over each patch
    count: torch.Tensor  # (B, h, w) how many passes masked each patch


def backbone_mask_ratio(backbone: object) -> float:
    """The MAE mask ratio the backbone was trained with (its decoder config, an attribute, or 0.75)."""
    for getter in (
        lambda b: b.mae_mask_ratio,
        lambda b: b.config.mae_decoder.mask_ratio,
        lambda b: b.model.config.mask_ratio,  # Hugging Face ViTMAE (SKELEX)
        lambda b: b.mask_ratio,
    ):
        try:
            value = getter(backbone)
        except AttributeError:
            continue
        if isinstance(value, (int, float)) and 0 < value < 1:
            return float(value)
    return 0.75


def _norm_pix(backbone: object, config: ReconConfig) -> bool:
    if config.norm_pix is not None:
        return config.norm_pix
    for getter in (lambda b: b.norm_pix_loss, lambda b: b.model.config.norm_pix_loss):
        try:
            return bool(getter(backbone))
        except AttributeError:
            continue
    return False


@torch.no_grad()
def _pass_errors(
    backbone: object, x: torch.Tensor, noise: torch.Tensor, std: torch.Tensor, norm_pix: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One backbone call: (per-pixel error (N, L, p*p), mask (N, L))."""
    p = int(backbone.patch_size)
    pred, mask = backbone.mae_reconstruct(x, noise)
    n, length, width = pred.shape
    channels = width // (p * p)
    if channels * p * p != width or channels > x.shape[1]:
        raise ValueError(
            f"MAE prediction width {width} does not fit patch {p} and {x.shape[1]} input channels"
        )
    target = patchify(x[:, :channels], p)
    if norm_pix:  # the decoder predicts per-patch normalised pixels: compare in that space
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
        diff = pred.float() - target
    else:  # back to [0, 1] pixel units so maps of different backbones are comparable
        diff = (pred.float() - target) * std[:channels].repeat(p * p).to(x.device)
    err = (diff**2).reshape(n, length, p * p, channels).mean(dim=-1)
    return err, mask.float()


@torch.no_grad()
def reconstruction_error(backbone: object, x: torch.Tensor, config: ReconConfig | None = None) -> ReconMaps:
    """Multi-pass masked reconstruction error of normalised images ``x`` (B, C, H, W)."""
    config = config or ReconConfig()
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    p = int(backbone.patch_size)
    b, _, hh, ww = x.shape
    if hh % p or ww % p:
        raise ValueError(f"input {hh}x{ww} is not a multiple of the patch size {p}")
    grid = (hh // p, ww // p)
    length = grid[0] * grid[1]
    ratio = config.mask_ratio if config.mask_ratio is not None else backbone_mask_ratio(backbone)
    n_passes = config.n_passes or passes_for_ratio(ratio)
    noise = complementary_noise(grid, n_passes, seed=config.seed).to(x.device)
    std = torch.tensor(backbone.preprocess.std, dtype=torch.float32)
    norm_pix = _norm_pix(backbone, config)

    acc = torch.zeros(b, length, p * p, device=x.device)
    cnt = torch.zeros(b, length, device=x.device)
    jobs = [(i, k) for i in range(b) for k in range(n_passes)]
    step = max(1, config.batch_size)
    for start in range(0, len(jobs), step):
        chunk = jobs[start : start + step]
        img_idx = torch.tensor([i for i, _ in chunk], device=x.device)
        err, mask = _pass_errors(backbone, x[img_idx], noise[[k for _, k in chunk]], std, norm_pix)
        acc.index_add_(0, img_idx, err * mask.unsqueeze(-1))
        cnt.index_add_(0, img_idx, mask)
    missing = cnt == 0
    if missing.any():  # a grid the lattice did not split evenly: mask exactly the uncovered patches once
        for i in torch.nonzero(missing.any(dim=1)).flatten().tolist():
            extra = torch.where(missing[i], 1.0, 0.0).unsqueeze(0) + 0.5 * torch.rand(1, length)
            err, mask = _pass_errors(backbone, x[i : i + 1], extra.to(x.device), std, norm_pix)
            acc[i] += err[0] * mask[0].unsqueeze(-1)
            cnt[i] += mask[0]
    per_pixel = acc / cnt.clamp_min(1).unsqueeze(-1)
    pixel = unpatchify(per_pixel, p, grid, 1)[:, 0]
    return ReconMaps(pixel=pixel, patch=per_pixel.mean(dim=-1).reshape(b, *grid), count=cnt.reshape(b, *grid))
