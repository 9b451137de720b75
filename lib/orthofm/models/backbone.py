"""The backbone abstraction every OrthoFM task runs on.

One interface over very different trunks (timm DINOv3-family ViTs, DINOv2 ViTs, MAE encoders):
grey-scale radiographs and MRI slices go in as normalised (B,3,H,W) tensors, and a dict of
CLS token, register tokens and the patch-token grid comes out. Heads, heatmaps and active learning
depend only on this surface, so importing a new family never touches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from torch import nn

from .mae_decoder import MAEDecoder, MAEDecoderConfig, random_masking

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OrthoFM's own weights see grey images scaled robustly to [0, 1]; the same value in all 3 channels.
ORTHOFM_MEAN = (0.5, 0.5, 0.5)
ORTHOFM_STD = (0.25, 0.25, 0.25)


@dataclass
class PreprocessConfig:
    """How the weights expect their input: pixel scale [0, 1], then (x - mean) / std per channel."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return cls(mean=tuple(d["mean"]), std=tuple(d["std"]), input_size=int(d.get("input_size", 224)))


@dataclass
class BackboneConfig:
    """Everything needed to rebuild a backbone without its weights (stored in model cards)."""

    arch: str = "vit_small_patch16_dinov3_qkvb"
    img_size: int = 224
    drop_path_rate: float = 0.0
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    mae_decoder: MAEDecoderConfig | None = None
    # Constructor overrides for non-standard sizes (timm kwargs such as embed_dim/depth/num_heads, or the
    # Hugging Face config of imported HF models); JSON-serialisable so model cards can store them.
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["mae_decoder"] = None if self.mae_decoder is None else asdict(self.mae_decoder)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        dec = d.get("mae_decoder")
        return cls(
            arch=d["arch"],
            img_size=int(d.get("img_size", 224)),
            drop_path_rate=float(d.get("drop_path_rate", 0.0)),
            preprocess=PreprocessConfig.from_dict(d.get("preprocess", {"mean": IMAGENET_MEAN, "std": IMAGENET_STD})),
            mae_decoder=None if dec is None else MAEDecoderConfig(**dec),
            model_kwargs=dict(d.get("model_kwargs") or {}),
        )


class Backbone(nn.Module):
    """Base class: subclasses implement ``forward_features`` (and optionally MAE reconstruction)."""

    arch: str
    embed_dim: int
    patch_size: int
    num_registers: int
    preprocess: PreprocessConfig

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)

    @property
    def has_mae_decoder(self) -> bool:
        return getattr(self, "mae_decoder", None) is not None

    def mae_reconstruct(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} ({self.arch}) has no MAE decoder")

    def forward_intermediates(
        self, x: torch.Tensor, layers: int | Sequence[int] = 1
    ) -> list[dict[str, torch.Tensor]]:
        """Outputs of several blocks, final norm applied, each as a ``forward_features``-style dict.

        ``layers``: an int n takes the last n blocks; a sequence takes those block indices (negative
        counts from the end). The last block's entry equals ``forward_features(x)``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_intermediates")


class EvaBackbone(Backbone):
    """timm ``Eva`` trunks: the DINOv3 family (axial RoPE, 4 registers), any multiple-of-16 input size."""

    def __init__(self, config: BackboneConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.arch = config.arch
        self.model = model if model is not None else timm.create_model(
            config.arch, pretrained=False, num_classes=0, global_pool="token",
            img_size=config.img_size, drop_path_rate=config.drop_path_rate, **config.model_kwargs,
        )
        self.embed_dim = int(self.model.embed_dim)
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.num_registers = 0 if self.model.reg_token is None else int(self.model.reg_token.shape[1])
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        self.preprocess = config.preprocess
        in_chans = int(self.model.patch_embed.proj.in_channels)
        self.mae_decoder = (
            MAEDecoder(config.mae_decoder, encoder_dim=self.embed_dim, patch_size=self.patch_size)
            if config.mae_decoder is not None else None
        )
        self.in_chans = in_chans

    # -- tokens -------------------------------------------------------------------------------
    def _tokens(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Run the trunk; ``keep`` (B, N_keep) selects visible patches (MAE) and their RoPE angles;
        ``patch_mask`` (B, L) bool replaces those patch embeddings by ``mask_token`` (iBOT)."""
        m = self.model
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of the patch size "
                             f"{self.patch_size}: pad or resize (orthofm.io.prepare_2d does)")
        x = m.patch_embed(x)  # (B, h, w, D) with dynamic_img_size
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        if patch_mask is not None and mask_token is not None:
            x = torch.where(patch_mask.unsqueeze(-1), mask_token.to(x.dtype).expand(b, h * w, d), x)
        rope = m.rope.get_embed(shape=(h, w)) if m.rope is not None else None  # (N, dim)
        if keep is not None:
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, d))
            if rope is not None:
                rope = rope[keep].unsqueeze(1)  # (B, 1, N_keep, dim): per-sample angles for each head
        prefix = []
        if m.cls_token is not None:
            prefix.append(m.cls_token.expand(b, -1, -1))
        if m.reg_token is not None:
            prefix.append(m.reg_token.expand(b, -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        x = m.norm_pre(x)
        for blk in m.blocks:
            x = blk(x, rope=rope)
        x = m.norm(x)
        return x, (h, w)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens, (h, w) = self._tokens(x)
        p = self.num_prefix_tokens
        return {
            "cls": tokens[:, 0],
            "registers": tokens[:, 1:p],
            "patches": tokens[:, p:].reshape(tokens.shape[0], h, w, -1),
        }

    # -- MAE ---------------------------------------------------------------------------------
    def mae_forward(
        self, x: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Encode the visible patches and decode all of them: (pred (B,L,p*p*C), mask (B,L) 1=masked)."""
        if self.mae_decoder is None:
            raise NotImplementedError(f"{self.arch} has no MAE decoder")
        b, _, hh, ww = x.shape
        h, w = hh // self.patch_size, ww // self.patch_size
        keep, mask, restore = random_masking(b, h * w, mask_ratio, x.device, noise)
        tokens, _ = self._tokens(x, keep)
        pred = self.mae_decoder(tokens, restore, (h, w), self.num_prefix_tokens)
        return pred, mask, (h, w)

    def mae_reconstruct(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = self.config.mae_decoder.mask_ratio if self.config.mae_decoder else 0.75
        pred, mask, _ = self.mae_forward(x, ratio, noise)
        return pred, mask

    def forward_intermediates(
        self, x: torch.Tensor, layers: int | Sequence[int] = 1
    ) -> list[dict[str, torch.Tensor]]:
        outs = self.model.forward_intermediates(
            x, indices=layers if isinstance(layers, int) else list(layers), return_prefix_tokens=True,
            norm=True, output_fmt="NCHW", intermediates_only=True,
        )
        return [{"cls": pre[:, 0], "registers": pre[:, 1:], "patches": sp.permute(0, 2, 3, 1)} for sp, pre in outs]


def create_backbone(
    arch: str = "vit_small_patch16_dinov3_qkvb",
    *,
    img_size: int = 224,
    preprocess: PreprocessConfig | None = None,
    mae_decoder: MAEDecoderConfig | None = None,
    drop_path_rate: float = 0.0,
) -> Backbone:
    """Build a randomly initialised backbone of a registered timm architecture."""
    config = BackboneConfig(
        arch=arch, img_size=img_size, drop_path_rate=drop_path_rate,
        preprocess=preprocess or PreprocessConfig(), mae_decoder=mae_decoder,
    )
    return backbone_from_config(config)


def backbone_from_config(config: BackboneConfig) -> Backbone:
    """Dispatch on the architecture family: timm Eva/DINOv3 here, imported families in their modules."""
    if "dinov3" in config.arch and not config.arch.startswith("hf_") or config.arch.startswith("eva"):
        return EvaBackbone(config)
    from .families import build_imported  # imported families build on this module: import lazily

    built = build_imported(config)
    if built is not None:
        return built
    raise ValueError(
        f"unsupported architecture {config.arch!r}: expected a timm DINOv3-family ViT "
        "such as 'vit_small_patch16_dinov3_qkvb', a timm DINOv2 ViT such as 'vit_base_patch14_dinov2' "
        "or an imported Hugging Face family (hf_vit_mae, hf_dinov2, hf_dinov2_with_registers, hf_dinov3_vit)"
    )
