"""DINOv3-family weights (Meta's official layout, OrthoFoundation's wrappers, timm's Eva layout) -> EvaBackbone.

The architecture is read off the tensors: embed dim and patch size from the patch embedding, depth from
the block count, registers from ``storage_tokens``, SwiGLU vs MLP from the FFN keys, head count from
``rope_embed.periods`` (it holds head_dim/4 periods) or, when a file lacks it, from the matching timm
variant or a sidecar config. The conversion itself is timm's own ``eva.checkpoint_filter_fn``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.eva import checkpoint_filter_fn

from .backbone import BackboneConfig, EvaBackbone, PreprocessConfig
from .errors import WeightFormatError

__all__ = [
    "EvaSignature",
    "convert_official",
    "eva_arch_for",
    "is_official_dinov3",
    "is_timm_eva",
    "official_signature",
    "timm_signature",
]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class EvaSignature:
    """Shape facts that pin down a DINOv3-style ViT."""

    patch: int
    embed: int
    depth: int
    heads: int | None
    mlp: str  # "mlp" | "swiglu"
    hidden: int
    qkv_bias: bool
    registers: int
    layerscale: bool
    in_chans: int = 3

    def without_heads(self) -> tuple:
        return (self.patch, self.embed, self.depth, self.mlp, self.hidden, self.qkv_bias, self.registers,
                self.layerscale, self.in_chans)


def is_official_dinov3(sd: Mapping[str, torch.Tensor]) -> bool:
    return "storage_tokens" in sd or ("blocks.0.attn.qkv.weight" in sd and "blocks.0.ls1.gamma" in sd
                                      and "rope_embed.periods" in sd)


def is_timm_eva(sd: Mapping[str, torch.Tensor]) -> bool:
    return "blocks.0.attn.qkv.weight" in sd and ("blocks.0.gamma_1" in sd or "reg_token" in sd) and "pos_embed" not in sd


def _depth(sd: Mapping[str, Any]) -> int:
    idx = {int(m.group(1)) for k in sd if (m := _BLOCK.match(k))}
    if not idx:
        raise WeightFormatError("no transformer blocks (blocks.N.*) in the state dict")
    if idx != set(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - idx)
        raise WeightFormatError(f"blocks are not numbered 0..{max(idx)}: missing block(s) {missing[:10]}")
    return len(idx)


def official_signature(sd: Mapping[str, torch.Tensor], heads_hint: int | None = None) -> EvaSignature:
    """Signature of a state dict in Meta's DINOv3 layout (``storage_tokens``, ``blocks.N.attn.qkv``)."""
    w = sd["patch_embed.proj.weight"]
    embed, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    heads = heads_hint
    if "rope_embed.periods" in sd:  # D_head / 4 periods
        head_dim = 4 * int(sd["rope_embed.periods"].shape[0])
        if embed % head_dim == 0:
            heads = embed // head_dim
    if "blocks.0.mlp.fc1.weight" in sd:
        mlp, hidden = "mlp", int(sd["blocks.0.mlp.fc1.weight"].shape[0])
    elif "blocks.0.mlp.w1.weight" in sd:
        mlp, hidden = "swiglu", int(sd["blocks.0.mlp.w1.weight"].shape[0])
    elif "blocks.0.mlp.w12.weight" in sd:
        mlp, hidden = "swiglu", int(sd["blocks.0.mlp.w12.weight"].shape[0]) // 2
    else:
        raise WeightFormatError("unknown feed-forward layout (no blocks.0.mlp.fc1 / w1 / w12 weights)")
    regs = int(sd["storage_tokens"].shape[1]) if "storage_tokens" in sd else 0
    return EvaSignature(patch, embed, _depth(sd), heads, mlp, hidden, "blocks.0.attn.qkv.bias" in sd, regs,
                        "blocks.0.ls1.gamma" in sd, in_chans)


def timm_signature(sd: Mapping[str, Any], heads: int | None = None) -> EvaSignature:
    """Signature of a state dict in timm's Eva layout (``reg_token``, ``gamma_1``, ``q_bias``)."""
    w = sd["patch_embed.proj.weight"]
    embed, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    if "blocks.0.mlp.fc1.weight" in sd:
        mlp, hidden = "mlp", int(sd["blocks.0.mlp.fc1.weight"].shape[0])
    elif "blocks.0.mlp.fc1_g.weight" in sd:
        mlp, hidden = "swiglu", int(sd["blocks.0.mlp.fc1_g.weight"].shape[0])
    else:
        raise WeightFormatError("unknown feed-forward layout (no blocks.0.mlp.fc1 / fc1_g weights)")
    regs = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
    return EvaSignature(patch, embed, _depth(sd), heads, mlp, hidden, "blocks.0.attn.q_bias" in sd, regs,
                        "blocks.0.gamma_1" in sd, in_chans)


# timm's registered DINOv3 variants (timm 1.0.31); ``timm_signatures()`` recomputes them and a test
# checks the two agree, so a timm upgrade that adds or changes variants is noticed.
KNOWN_VARIANTS: dict[str, EvaSignature] = {
    "vit_7b_patch16_dinov3": EvaSignature(16, 4096, 40, 32, "swiglu", 8192, False, 4, True, 3),
    "vit_base_patch16_dinov3": EvaSignature(16, 768, 12, 12, "mlp", 3072, False, 4, True, 3),
    "vit_base_patch16_dinov3_qkvb": EvaSignature(16, 768, 12, 12, "mlp", 3072, True, 4, True, 3),
    "vit_huge_plus_patch16_dinov3": EvaSignature(16, 1280, 32, 20, "swiglu", 5120, False, 4, True, 3),
    "vit_huge_plus_patch16_dinov3_qkvb": EvaSignature(16, 1280, 32, 20, "swiglu", 5120, True, 4, True, 3),
    "vit_large_patch16_dinov3": EvaSignature(16, 1024, 24, 16, "mlp", 4096, False, 4, True, 3),
    "vit_large_patch16_dinov3_qkvb": EvaSignature(16, 1024, 24, 16, "mlp", 4096, True, 4, True, 3),
    "vit_small_patch16_dinov3": EvaSignature(16, 384, 12, 6, "mlp", 1536, False, 4, True, 3),
    "vit_small_patch16_dinov3_qkvb": EvaSignature(16, 384, 12, 6, "mlp", 1536, True, 4, True, 3),
    "vit_small_plus_patch16_dinov3": EvaSignature(16, 384, 12, 6, "swiglu", 1536, False, 4, True, 3),
    "vit_small_plus_patch16_dinov3_qkvb": EvaSignature(16, 384, 12, 6, "swiglu", 1536, True, 4, True, 3),
    "vit_tiny_patch16_dinov3_qkvb": EvaSignature(16, 192, 12, 3, "mlp", 768, True, 4, True, 3),
}


def timm_signatures() -> dict[str, EvaSignature]:
    """Signatures of timm's registered DINOv3 variants, built on the meta device (slow-ish: ~1 s)."""
    out = {}
    for name in timm.list_models("vit_*_patch16_dinov3*"):
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
        out[name] = timm_signature(model.state_dict(), heads=int(model.blocks[0].attn.num_heads))
    return out


def eva_arch_for(sig: EvaSignature) -> tuple[str, dict[str, Any]]:
    """A timm arch name (+ constructor overrides) that has exactly this signature."""
    for name, reg in KNOWN_VARIANTS.items():  # the signature includes qkv_bias, so _qkvb twins never clash
        if reg.without_heads() == sig.without_heads() and sig.heads in (None, reg.heads):
            return name, {}
    heads = sig.heads
    if heads is None:
        if sig.embed % 64:
            raise WeightFormatError(
                f"cannot infer the number of attention heads for embed dim {sig.embed} (no rope_embed.periods "
                "and no config); pass arch=... or put a config.json with num_heads next to the file"
            )
        heads = sig.embed // 64
    base = {("mlp", True): "vit_small_patch16_dinov3_qkvb", ("mlp", False): "vit_small_patch16_dinov3",
            ("swiglu", True): "vit_small_plus_patch16_dinov3_qkvb",
            ("swiglu", False): "vit_small_plus_patch16_dinov3"}[(sig.mlp, sig.qkv_bias)]
    ref = KNOWN_VARIANTS[base]
    wanted = {"patch_size": (sig.patch, ref.patch), "embed_dim": (sig.embed, ref.embed),
              "depth": (sig.depth, ref.depth), "num_heads": (heads, ref.heads),
              "num_reg_tokens": (sig.registers, ref.registers), "in_chans": (sig.in_chans, ref.in_chans)}
    kwargs: dict[str, Any] = {k: v for k, (v, default) in wanted.items() if v != default}
    if sig.hidden * ref.embed != ref.hidden * sig.embed:
        # int(dim * ratio) must give back exactly ``hidden``: nudge up against float round-down
        kwargs["mlp_ratio"] = (sig.hidden + 1e-6) / sig.embed
        if sig.mlp == "swiglu":
            kwargs["swiglu_align_to"] = 1
    if not sig.layerscale:
        kwargs["init_values"] = None
    return base, kwargs


def sidecar_heads(path: Path, embed: int) -> int | None:
    """``num_heads`` from a config JSON next to a weights file (``<stem>.json``, ``config.json``, ...).

    Understands plain configs (``embed_dim``/``hidden_size`` + ``num_heads``/``num_attention_heads``) and
    timm hub configs (``architecture`` + optional ``model_args``).
    """
    for name in (f"{path.stem}.json", f"{path.stem}_config.json", "config.json", "dinov3_config.json"):
        cfg_path = path.parent / name
        if not cfg_path.is_file():
            continue
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(cfg, dict):
            continue
        args = {**cfg, **(cfg.get("model_args") or {})}
        dim = args.get("embed_dim", args.get("hidden_size"))
        heads = args.get("num_heads", args.get("num_attention_heads"))
        if heads is None and isinstance(cfg.get("architecture"), str) and timm.is_model(cfg["architecture"]):
            with torch.device("meta"):
                model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0)
            dim, heads = dim or int(model.embed_dim), int(model.blocks[0].attn.num_heads)
        if dim == embed and isinstance(heads, int) and heads > 0:
            return heads
    return None


def convert_official(sd: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Official DINOv3 keys -> timm Eva keys (timm's converter: drops rope periods / bias_mask / mask_token,
    renames ls->gamma and storage->reg tokens, splits the qkv bias into q/v; the key bias is dropped, which is
    exact because a per-key constant added to every key shifts all logits of a query equally)."""
    sd = {k: v for k, v in sd.items() if not k.startswith(("dino_head.", "ibot_head.", "head."))}
    return checkpoint_filter_fn(dict(sd), model)


def build_eva(arch: str, kwargs: dict[str, Any], preprocess: PreprocessConfig, img_size: int = 224) -> EvaBackbone:
    config = BackboneConfig(arch=arch, img_size=img_size, preprocess=preprocess, model_kwargs=dict(kwargs))
    return EvaBackbone(config)
