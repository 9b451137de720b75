"""A light MAE decoder for OrthoFM's own backbones.

It predicts the pixels of every patch from the visible-patch tokens; OrthoFM uses it to pretrain
(masked reconstruction) and, later, for SKELEX-style reconstruction-error heatmaps. Positions come
from a fixed 2-D sin-cos table computed for any grid, so the decoder works at any input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import to_2tuple
from timm.models.vision_transformer import Block
from torch import nn


@dataclass
class MAEDecoderConfig:
    dim: int = 256
    depth: int = 4
    num_heads: int = 8
    out_chans: int = 1  # grey radiographs: predict one channel
    mask_ratio: float = 0.75


def sincos_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos position table (h*w, dim); half the channels encode rows, half columns."""
    if dim % 4:
        raise ValueError(f"sin-cos position dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    out = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega[None, :]
        out += [angles.sin(), angles.cos()]
    return torch.cat(out, dim=1)


def random_masking(
    batch: int, length: int, mask_ratio: float, device: torch.device, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE per-sample masking by argsort of noise (same convention as HF ViTMAE: low noise = kept).

    Returns ``keep`` (B, N_keep) indices, ``mask`` (B, L) with 1 = masked, ``restore`` (B, L).
    """
    n_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch, length, device=device)
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    keep = shuffle[:, :n_keep]
    mask = torch.ones(batch, length, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, restore)
    return keep, mask, restore


class MAEDecoder(nn.Module):
    def __init__(self, config: MAEDecoderConfig, encoder_dim: int, patch_size: int) -> None:
        super().__init__()
        self.config = config
        self.patch_size = to_2tuple(patch_size)[0]
        self.embed = nn.Linear(encoder_dim, config.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.blocks = nn.ModuleList(
            [Block(config.dim, config.num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(config.dim)
        self.pred = nn.Linear(config.dim, self.patch_size**2 * config.out_chans)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self, tokens: torch.Tensor, restore: torch.Tensor, grid: tuple[int, int], num_prefix: int
    ) -> torch.Tensor:
        """``tokens``: encoder output (B, prefix + N_keep, D) -> per-patch pixels (B, L, p*p*C)."""
        x = self.embed(tokens)
        b, _, d = x.shape
        prefix, visible = x[:, :num_prefix], x[:, num_prefix:]
        length = restore.shape[1]
        fill = self.mask_token.expand(b, length - visible.shape[1], -1).to(visible.dtype)
        patches = torch.cat([visible, fill], dim=1)
        patches = torch.gather(patches, 1, restore.unsqueeze(-1).expand(-1, -1, d))
        patches = patches + sincos_2d(*grid, d, device=x.device).to(x.dtype)
        x = torch.cat([prefix, patches], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x[:, num_prefix:]))


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C) in row-major patch order, pixels (p, p, C) per patch like HF ViTMAE."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, L, p*p*C) -> (B, C, H, W)."""
    b = patches.shape[0]
    p = patch_size
    h, w = grid
    x = patches.reshape(b, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, h * p, w * p)
