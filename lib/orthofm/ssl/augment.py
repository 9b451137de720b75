"""Augmentations made for radiographs and MRI slices (grey level and geometry, no colour jitter).

Inputs are single-channel float tensors in [0, 1] (1, H, W). All randomness comes from torch's
global generator so a checkpoint that stores its state resumes the exact same crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    rotate_p: float = 0.3
    rotate_deg: float = 10.0
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: float = 0.25
    brightness: float = 0.15
    local_contrast_p: float = 0.3
    blur_p: float = 0.2
    noise_p: float = 0.2
    noise_std: float = 0.03


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


def random_resized_crop(img: torch.Tensor, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> torch.Tensor:
    """Crop a random area fraction ``scale`` and aspect ``ratio`` of the image and resize to ``size``."""
    _, h, w = img.shape
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(*scale)
        aspect = math.exp(_uniform(*log_ratio))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, ()).item())
            left = int(torch.randint(0, w - cw + 1, ()).item())
            break
    else:  # fall back to a centred square crop
        side = min(h, w)
        ch = cw = side
        top, left = (h - side) // 2, (w - side) // 2
    crop = img[:, top : top + ch, left : left + cw]
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    limit = min(img.shape[-2:]) - 1  # reflect padding needs the kernel to fit inside the image
    sigma = min(sigma, max(limit, 3) / 6)
    k = max(3, min(int(2 * round(3 * sigma) + 1), limit if limit % 2 else limit - 1))
    return TF.gaussian_blur(img, kernel_size=[k, k], sigma=[sigma, sigma])


def grey_level(img: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Exposure/processing differences between scanners: gamma, window, local contrast, blur, noise."""
    img = img.clamp(0, 1) ** _uniform(*cfg.gamma)
    img = (img - 0.5) * (1 + _uniform(-cfg.contrast, cfg.contrast)) + 0.5 + _uniform(-cfg.brightness, cfg.brightness)
    if torch.rand(()) < cfg.local_contrast_p:  # CLAHE-like: boost detail against a large-scale background
        background = _gaussian_blur(img, sigma=_uniform(4.0, 12.0))
        img = img + _uniform(0.3, 1.0) * (img - background)
    if torch.rand(()) < cfg.blur_p:
        img = _gaussian_blur(img, sigma=_uniform(0.3, 1.5))
    if torch.rand(()) < cfg.noise_p:
        img = img + torch.randn_like(img) * _uniform(0.0, cfg.noise_std)
    return img.clamp(0, 1)


def augment_view(img: torch.Tensor, size: int, cfg: AugmentConfig, scale: tuple[float, float] | None = None) -> torch.Tensor:
    """One augmented view (1, size, size) of a [0, 1] grey image."""
    view = random_resized_crop(img, size, scale or cfg.scale, cfg.ratio)
    if torch.rand(()) < cfg.hflip_p:
        view = view.flip(-1)
    if torch.rand(()) < cfg.rotate_p:
        view = TF.rotate(view, _uniform(-cfg.rotate_deg, cfg.rotate_deg), interpolation=TF.InterpolationMode.BILINEAR)
    return grey_level(view, cfg)
