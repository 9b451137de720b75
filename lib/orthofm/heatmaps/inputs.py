"""Model inputs for heatmaps: records -> prepared canvases -> patch tokens, shared by engine and bank builder.

The bank and the maps must see identical preparation (canvas size, intensity scaling, normalisation),
so both go through this one class.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..heads.runtime import forward_features, inference_dtype
from ..io import ImageRecord, PreparedImage, SpacingUnknownWarning, prepare_2d, read_image, robust_range

__all__ = ["ModelInputs", "read_quietly"]


def read_quietly(item: str | Path | list[Path]) -> ImageRecord:
    """read_image without the 'PNG has no spacing' warning (heatmap JSON says ``spacing_known`` instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpacingUnknownWarning)
        return read_image([str(p) for p in item] if isinstance(item, list) else str(item))


class ModelInputs:
    def __init__(
        self,
        backbone: torch.nn.Module,
        size: int | None = None,
        batch_size: int = 8,
        min_patch_fraction: float = 0.25,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.backbone = backbone.eval()
        # the fast path by default (bf16 autocast where the CPU runs it natively; ORTHOFM_FORCE_FP32=1 forces
        # float32): the bank and the maps share this class, so they always see the same precision
        self.dtype = dtype if dtype is not None else inference_dtype()
        self.size = int(size or backbone.preprocess.input_size)
        self.patch_size = int(backbone.patch_size)
        if self.size % self.patch_size:
            raise ValueError(f"canvas size {self.size} is not a multiple of the patch size {self.patch_size}")
        self.batch_size = max(1, int(batch_size))
        self.min_patch_fraction = float(min_patch_fraction)
        try:
            self.device = next(backbone.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")

    def prepare(self, record: ImageRecord) -> list[PreparedImage]:
        """One canvas for a radiograph; one per slice for a volume (one intensity range for all slices)."""
        arr = np.asarray(record.array)
        mean, std = tuple(self.backbone.preprocess.mean), tuple(self.backbone.preprocess.std)
        if arr.ndim == 2:
            return [prepare_2d(arr, size=self.size, mean=mean, std=std)]
        if arr.ndim == 3:
            if arr.shape[0] == 0:
                raise ValueError("volume has no slices")
            value_range = robust_range(arr)
            return [prepare_2d(s, size=self.size, mean=mean, std=std, value_range=value_range) for s in arr]
        raise ValueError(f"expected a 2D image or a 3D volume, got array shape {arr.shape}")

    def valid_patches(self, prepared: list[PreparedImage]) -> tuple[np.ndarray, np.ndarray]:
        """(N, h, w) patches at least ``min_patch_fraction`` inside the image; the (N, S, S) pixel mask."""
        canvas = np.stack([p.mask for p in prepared])
        p = self.patch_size
        n, sh, sw = canvas.shape
        frac = canvas.reshape(n, sh // p, p, sw // p, p).mean(axis=(2, 4))
        return frac >= self.min_patch_fraction, canvas

    @staticmethod
    def batch(prepared: list[PreparedImage]) -> torch.Tensor:
        return torch.stack([p.tensor for p in prepared])

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) -> patch tokens (N, h, w, D) and CLS tokens (N, D), float32 on CPU."""
        patches, cls = [], []
        for i in range(0, x.shape[0], self.batch_size):
            out = forward_features(self.backbone, x[i : i + self.batch_size].to(self.device), self.dtype)
            patches.append(out["patches"].float().cpu())
            cls.append(out["cls"].float().cpu())
        return torch.cat(patches), torch.cat(cls)
