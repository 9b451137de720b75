"""timm ``VisionTransformer`` trunks (DINOv2 and other absolute-position ViTs) behind the Backbone interface.

Weights come as timm state dicts or in Meta's official DINOv2 layout; both go through timm's own
``vision_transformer.checkpoint_filter_fn``. Position embeddings are interpolated by timm at run time
(``dynamic_img_size``), so any input whose sides are multiples of the patch size works.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from .backbone import Backbone, BackboneConfig
from .errors import WeightFormatError

__all__ = ["TimmViTBackbone", "ViTSignature", "convert_vit", "is_official_dinov2", "is_timm_vit",
           "vit_arch_for", "vit_signature"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
# Classifier / pooling heads a feature backbone does not use.
HEAD_PREFIXES = ("head.", "head_drop.", "fc_norm.", "attn_pool.", "dino_head.", "ibot_head.")


class TimmViTBackbone(Backbone):
    """A timm ``VisionTransformer`` (class token, optional registers, absolute position embeddings)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.arch = config.arch
        kwargs = resolve_kwargs(config.model_kwargs)
        kwargs.setdefault("img_size", config.img_size)
        self.model = timm.create_model(
            config.arch, pretrained=False, num_classes=0, global_pool="token", dynamic_img_size=True,
            drop_path_rate=config.drop_path_rate, **kwargs,
        )
        if not getattr(self.model, "has_class_token", True) or self.model.cls_token is None:
            raise ValueError(f"{config.arch}: a backbone needs a class token")
        self.embed_dim = int(self.model.embed_dim)
        self.patch_size = int(self.model.patch_embed.patch_size[0])
        self.num_registers = int(getattr(self.model, "num_reg_tokens", 0))
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        self.preprocess = config.preprocess

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = self._grid(x)
        tokens = self.model.forward_features(x)
        p = self.num_prefix_tokens
        return {"cls": tokens[:, 0], "registers": tokens[:, 1:p],
                "patches": tokens[:, p:].reshape(tokens.shape[0], h, w, -1)}

    def forward_intermediates(
        self, x: torch.Tensor, layers: int | Sequence[int] = 1
    ) -> list[dict[str, torch.Tensor]]:
        self._grid(x)
        outs = self.model.forward_intermediates(
            x, indices=layers if isinstance(layers, int) else list(layers), return_prefix_tokens=True,
            norm=True, output_fmt="NCHW", intermediates_only=True,
        )
        return [{"cls": pre[:, 0], "registers": pre[:, 1:], "patches": sp.permute(0, 2, 3, 1)} for sp, pre in outs]


def is_official_dinov2(sd: Mapping[str, torch.Tensor]) -> bool:
    """Meta's DINOv2 layout: ``mask_token`` + ``pos_embed`` (+ ``register_tokens``) + ``blocks.N.ls1.gamma``."""
    return "mask_token" in sd and "pos_embed" in sd and "storage_tokens" not in sd


def is_timm_vit(sd: Mapping[str, torch.Tensor]) -> bool:
    return "pos_embed" in sd and "blocks.0.attn.qkv.weight" in sd and "patch_embed.proj.weight" in sd


@dataclass(frozen=True)
class ViTSignature:
    patch: int
    embed: int
    depth: int
    heads: int | None
    mlp: str  # "mlp" | "swiglu_packed"
    hidden: int
    qkv_bias: bool
    registers: int
    layerscale: bool
    no_embed_class: bool
    grid: int
    in_chans: int = 3

    def key(self) -> tuple:
        return (self.patch, self.embed, self.depth, self.mlp, self.hidden, self.qkv_bias, self.registers,
                self.layerscale, self.no_embed_class, self.in_chans)


def vit_signature(sd: Mapping[str, Any], heads: int | None = None) -> ViTSignature:
    """Signature of a timm-layout ViT state dict (after conversion)."""
    w = sd["patch_embed.proj.weight"]
    embed, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    depth = len({int(m.group(1)) for k in sd if (m := _BLOCK.match(k))})
    if depth == 0:
        raise WeightFormatError("no transformer blocks (blocks.N.*) in the state dict")
    fc1, fc2 = sd["blocks.0.mlp.fc1.weight"], sd["blocks.0.mlp.fc2.weight"]
    if int(fc2.shape[1]) * 2 == int(fc1.shape[0]):
        mlp, hidden = "swiglu_packed", int(fc1.shape[0])
    else:
        mlp, hidden = "mlp", int(fc1.shape[0])
    regs = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    n_prefix = regs + (1 if "cls_token" in sd else 0)
    length = int(sd["pos_embed"].shape[1])
    if _is_square(length - n_prefix) and length > n_prefix:
        no_embed_class, grid = False, math.isqrt(length - n_prefix)
    elif _is_square(length):
        no_embed_class, grid = True, math.isqrt(length)
    else:
        raise WeightFormatError(f"pos_embed with {length} positions is not a square patch grid")
    return ViTSignature(patch, embed, depth, heads, mlp, hidden, "blocks.0.attn.qkv.bias" in sd, regs,
                        "blocks.0.ls1.gamma" in sd, no_embed_class, grid, in_chans)


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


# timm's registered DINOv2 variants (timm 1.0.31); ``timm_signatures()`` recomputes them for a drift test.
KNOWN_VARIANTS: dict[str, ViTSignature] = {
    "vit_base_patch14_dinov2": ViTSignature(14, 768, 12, 12, "mlp", 3072, True, 0, True, False, 37, 3),
    "vit_base_patch14_reg4_dinov2": ViTSignature(14, 768, 12, 12, "mlp", 3072, True, 4, True, True, 37, 3),
    "vit_giant_patch14_dinov2": ViTSignature(14, 1536, 40, 24, "swiglu_packed", 8192, True, 0, True, False, 37, 3),
    "vit_giant_patch14_reg4_dinov2": ViTSignature(14, 1536, 40, 24, "swiglu_packed", 8192, True, 4, True, True, 37, 3),
    "vit_large_patch14_dinov2": ViTSignature(14, 1024, 24, 16, "mlp", 4096, True, 0, True, False, 37, 3),
    "vit_large_patch14_reg4_dinov2": ViTSignature(14, 1024, 24, 16, "mlp", 4096, True, 4, True, True, 37, 3),
    "vit_small_patch14_dinov2": ViTSignature(14, 384, 12, 6, "mlp", 1536, True, 0, True, False, 37, 3),
    "vit_small_patch14_reg4_dinov2": ViTSignature(14, 384, 12, 6, "mlp", 1536, True, 4, True, True, 37, 3),
}


def timm_signatures() -> dict[str, ViTSignature]:
    out = {}
    for name in timm.list_models("vit_*_patch14_*dinov2"):
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
        out[name] = vit_signature(model.state_dict(), heads=int(model.blocks[0].attn.num_heads))
    return out


def vit_arch_for(sig: ViTSignature) -> tuple[str, dict[str, Any]]:
    """A timm arch name + overrides reproducing ``sig`` (registered DINOv2 names when they match)."""
    for name, reg in KNOWN_VARIANTS.items():
        if reg.key() == sig.key() and sig.heads in (None, reg.heads):
            return name, {"img_size": sig.grid * sig.patch}
    heads = sig.heads
    if heads is None:
        if sig.embed % 64:
            raise WeightFormatError(
                f"cannot infer the number of attention heads for embed dim {sig.embed}; pass arch=... or put "
                "a config.json with num_heads next to the file"
            )
        heads = sig.embed // 64
    kwargs: dict[str, Any] = {
        "patch_size": sig.patch, "embed_dim": sig.embed, "depth": sig.depth, "num_heads": heads,
        "mlp_ratio": (sig.hidden + 1e-6) / sig.embed, "qkv_bias": sig.qkv_bias, "reg_tokens": sig.registers,
        "no_embed_class": sig.no_embed_class, "img_size": sig.grid * sig.patch, "in_chans": sig.in_chans,
        "init_values": 1e-5 if sig.layerscale else None,
    }
    if sig.mlp == "swiglu_packed":
        kwargs["mlp_layer"] = "swiglu_packed"  # resolved to the class in build (JSON-safe here)
    return "vit_base_patch16_224", kwargs


def resolve_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Turn JSON-safe kwargs into timm constructor arguments (string layer names -> classes)."""
    out = dict(kwargs)
    if out.get("mlp_layer") == "swiglu_packed":
        from timm.layers import SwiGLUPacked

        out["mlp_layer"] = SwiGLUPacked
        out["act_layer"] = torch.nn.SiLU
    return out


def convert_vit(sd: Mapping[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm's converter (handles the official DINOv2 layout), minus classifier heads; returns dropped keys."""
    dropped = [k for k in sd if k.startswith(HEAD_PREFIXES)]
    kept = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}
    return checkpoint_filter_fn(kept, model), dropped


def to_timm_layout(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DINOv2 keys -> timm keys without needing a model (for arch inference only)."""
    from timm.models.vision_transformer import _convert_dinov2

    return _convert_dinov2(dict(sd), None) if is_official_dinov2(sd) else dict(sd)
