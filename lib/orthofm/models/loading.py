"""One entry point for every supported weights format: detect it, convert it, load it strictly.

``load_backbone(path)`` accepts an OrthoFM folder, a Hugging Face folder, or a single state-dict file
(.pth/.pt/.bin/.safetensors) in Meta's DINOv3 or DINOv2 layout (also wrapped by OrthoFoundation-style
training code), or in timm's layout. ``inspect_weights(path)`` reports what was found.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backbone import Backbone, BackboneConfig, PreprocessConfig
from .checkpoint import Unwrapped, read_tensors, unwrap_state_dict
from .dinov3 import (
    build_eva,
    convert_official,
    eva_arch_for,
    is_official_dinov3,
    is_timm_eva,
    official_signature,
    sidecar_heads,
    timm_signature,
)
from .errors import WeightFormatError, strict_load
from .orthofm_format import BACKBONE_FILE, CARD_NAME, is_orthofm_folder, load_orthofm, read_model_card
from .pretrained import WeightsCfg, get_weights_cfg

__all__ = ["WeightsInfo", "describe_arch", "detect_format", "inspect_weights", "load_backbone"]

log = logging.getLogger(__name__)

# Human names of the formats ``detect_format`` reports.
FORMATS = {
    "orthofm": "OrthoFM folder (backbone.safetensors + model_card.json)",
    "hf": "Hugging Face model folder",
    "dinov3_official": "DINOv3 official state dict (Meta layout)",
    "timm_eva": "DINOv3 state dict in timm Eva layout",
    "dinov2_official": "DINOv2 official state dict (Meta layout)",
    "timm_vit": "timm VisionTransformer state dict",
    "hf_state_dict": "Hugging Face weights file without its folder",
}


HF_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class WeightsInfo:
    """What a path holds, before building any model."""

    path: str
    format: str  # key of FORMATS
    description: str
    container: str = ""  # 'folder', 'safetensors', 'PyTorch zip checkpoint', ...
    unwrapped: Unwrapped | None = None
    hf_model_type: str | None = None
    notes: list[str] = field(default_factory=list)


def _hf_folder_type(path: Path) -> str | None:
    from .hf import read_hf_config

    if (path / "config.json").is_file():
        return read_hf_config(path).get("model_type") or "unknown"
    return None


def detect_format(path: str | os.PathLike[str]) -> WeightsInfo:
    """Identify the format of a weights file or folder (reads the file's tensors, builds no model)."""
    p = Path(path)
    if not p.exists():
        raise WeightFormatError(f"{p}: no such file or folder", path=str(p))
    if p.is_file() and p.name == BACKBONE_FILE and is_orthofm_folder(p.parent):
        p = p.parent
    elif p.is_file() and p.name in HF_WEIGHT_NAMES and (p.parent / "config.json").is_file():
        p = p.parent  # the weights file of a Hugging Face folder: load the folder (it has the config)
    if p.is_dir():
        if is_orthofm_folder(p):
            return WeightsInfo(str(p), "orthofm", FORMATS["orthofm"], "folder")
        model_type = _hf_folder_type(p)
        if model_type is not None:
            return WeightsInfo(str(p), "hf", f"{FORMATS['hf']} (model_type {model_type!r})", "folder",
                               hf_model_type=model_type)
        found = sorted(x.name for x in p.iterdir())[:10]
        raise WeightFormatError(
            f"{p}: a folder, but neither an OrthoFM folder ({CARD_NAME}) nor a Hugging Face folder (config.json); "
            f"it contains: {', '.join(found) or 'nothing'}", path=str(p), looks_like="folder",
        )
    raw = read_tensors(p)
    unwrapped = unwrap_state_dict(raw, p)
    sd = unwrapped.state_dict
    container = "safetensors" if p.suffix.lower() == ".safetensors" else "PyTorch checkpoint"
    if is_official_dinov3(sd):
        fmt = "dinov3_official"
    elif is_timm_eva(sd):
        fmt = "timm_eva"
    elif "mask_token" in sd and "pos_embed" in sd:
        fmt = "dinov2_official"
    elif "pos_embed" in sd and "blocks.0.attn.qkv.weight" in sd:
        fmt = "timm_vit"
    elif any(k.startswith(("embeddings.patch_embeddings", "vit.embeddings", "encoder.layer.", "model.layer."))
             for k in sd):
        fmt = "hf_state_dict"
    else:
        keys = list(sd)[:8]
        raise WeightFormatError(
            f"{p}: a {container} with {len(sd)} tensors, but not a backbone layout this importer knows "
            f"(first keys: {', '.join(keys) or 'none'}); supported: DINOv3/DINOv2 official, timm ViT/Eva, "
            "Hugging Face folders, OrthoFM folders", path=str(p), looks_like=container,
        )
    info = WeightsInfo(str(p), fmt, FORMATS[fmt], container, unwrapped)
    if unwrapped.wrapper or unwrapped.prefix or unwrapped.dropped:
        info.notes.append(unwrapped.describe())
    return info


def _dinov3_weights_cfg(sd: dict[str, torch.Tensor], unwrapped: Unwrapped) -> WeightsCfg:
    if any(k.startswith("local_cls_norm") for k in sd) and int(sd["patch_embed.proj.weight"].shape[0]) == 1024:
        return get_weights_cfg("dinov3_sat493m")
    if not unwrapped.wrapper and unwrapped.prefix in ("backbone.", "module.backbone.backbone."):
        return get_weights_cfg("orthofoundation")
    return get_weights_cfg("dinov3_lvd1689m")


def _load_eva(info: WeightsInfo, arch: str | None, preprocess: PreprocessConfig | None) -> Backbone:
    assert info.unwrapped is not None
    sd = info.unwrapped.state_dict
    path = Path(info.path)
    official = info.format == "dinov3_official"
    embed = int(sd["patch_embed.proj.weight"].shape[0])
    hint = sidecar_heads(path, embed)
    sig = official_signature(sd, hint) if official else timm_signature(sd, hint)
    if arch is None:
        arch_name, kwargs = eva_arch_for(sig)
    else:
        arch_name, kwargs = arch, {}
    weights = _dinov3_weights_cfg(sd, info.unwrapped) if official else get_weights_cfg("timm_dinov3")
    try:
        bb = build_eva(arch_name, kwargs, preprocess or weights.preprocess)
    except Exception as exc:
        raise WeightFormatError(f"{path}: cannot build arch {arch_name!r}: {exc}", path=str(path),
                                looks_like=info.description) from exc
    converted = convert_official(sd, bb.model) if official else {
        k: v for k, v in sd.items() if not k.startswith(("head.", "dino_head.", "ibot_head.")) and "rope." not in k
    }
    strict_load(bb.model, converted, looks_like=info.description, path=str(path), arch=describe_arch(bb.config))
    bb.pretrained_cfg = weights
    return bb


def _load_vit(info: WeightsInfo, arch: str | None, preprocess: PreprocessConfig | None) -> Backbone:
    from .timm_vit import TimmViTBackbone, convert_vit, to_timm_layout, vit_arch_for, vit_signature

    assert info.unwrapped is not None
    sd = info.unwrapped.state_dict
    path = Path(info.path)
    timm_layout = to_timm_layout(sd)
    embed = int(sd["patch_embed.proj.weight"].shape[0])
    sig = vit_signature(timm_layout, sidecar_heads(path, embed))
    arch_name, kwargs = vit_arch_for(sig) if arch is None else (arch, {"img_size": sig.grid * sig.patch})
    weights = get_weights_cfg("dinov2" if info.format == "dinov2_official" or "dinov2" in arch_name else "timm_vit")
    config = BackboneConfig(arch=arch_name, img_size=sig.grid * sig.patch, preprocess=preprocess or weights.preprocess,
                            model_kwargs=kwargs)
    try:
        bb = TimmViTBackbone(config)
    except Exception as exc:
        raise WeightFormatError(f"{path}: cannot build arch {arch_name!r}: {exc}", path=str(path),
                                looks_like=info.description) from exc
    converted, dropped = convert_vit(sd, bb.model)
    if dropped:
        info.notes.append(f"dropped {len(dropped)} classifier key(s) ({', '.join(dropped[:3])})")
    strict_load(bb.model, converted, looks_like=info.description, path=str(path), arch=describe_arch(config))
    bb.pretrained_cfg = weights
    return bb


def load_backbone(
    path_or_dir: str | os.PathLike[str], arch: str | None = None, *, preprocess: PreprocessConfig | None = None,
) -> Backbone:
    """Load any supported weights as a float32 :class:`Backbone` in eval mode.

    ``arch`` overrides the inferred timm architecture (state-dict files) and must match for folders.
    ``preprocess`` overrides the normalisation recorded for the weights (e.g. for a fine-tune whose
    authors changed mean/std). Raises :class:`WeightFormatError` with the format the path looks like and
    every missing / unexpected / mismatched key when it cannot be loaded completely.
    """
    return _load(detect_format(path_or_dir), arch, preprocess)


def _load(info: WeightsInfo, arch: str | None, preprocess: PreprocessConfig | None) -> Backbone:
    if info.format == "orthofm":
        bb = load_orthofm(info.path, arch)
    elif info.format == "hf":
        from .hf import load_hf_folder

        bb = load_hf_folder(Path(info.path), arch)
    elif info.format in ("dinov3_official", "timm_eva"):
        bb = _load_eva(info, arch, preprocess)
    elif info.format in ("dinov2_official", "timm_vit"):
        bb = _load_vit(info, arch, preprocess)
    else:
        raise WeightFormatError(
            f"{info.path}: looks like {info.description}: pass the whole Hugging Face folder (with config.json), "
            "not the weights file alone", path=info.path, looks_like=info.description,
        )
    if preprocess is not None:
        bb.preprocess = preprocess
        bb.config.preprocess = preprocess
    info.unwrapped = None  # do not keep a second copy of the raw tensors alive
    bb.weights_info = info
    for note in info.notes:
        log.info("%s: %s", info.path, note)
    return bb.eval()


def describe_arch(config: BackboneConfig) -> str:
    """``arch`` plus any size overrides, e.g. ``vit_small_patch16_dinov3_qkvb(embed_dim=96, depth=2)``."""
    kwargs = {k: v for k, v in config.model_kwargs.items() if k not in ("hf_config", "with_decoder")}
    if config.arch.startswith("hf_") and "hf_config" in config.model_kwargs:
        hf = config.model_kwargs["hf_config"]
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "num_register_tokens")
        kwargs = {k: hf[k] for k in keys if k in hf}
    if not kwargs:
        return config.arch
    shown = ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in kwargs.items())
    return f"{config.arch}({shown})"


def inspect_weights(path: str | os.PathLike[str], arch: str | None = None) -> dict[str, Any]:
    """Format, architecture, parameter counts, preprocessing and model card of a weights path.

    Loads the weights fully (that is the only honest check that they load); on failure the report
    still holds the detected format and the error.
    """
    info = detect_format(path)
    report: dict[str, Any] = {"path": info.path, "format": info.format, "description": info.description,
                              "container": info.container, "notes": list(info.notes)}
    if info.format == "orthofm":
        report["model_card"] = read_model_card(info.path)
    try:
        bb = _load(info, arch, None)
    except WeightFormatError as exc:
        report["loads"] = False
        report["error"] = str(exc)
        return report
    n_all = sum(p.numel() for p in bb.parameters())
    n_dec = sum(p.numel() for n, p in bb.named_parameters() if n.startswith("mae_decoder."))
    report.update({
        "loads": True,
        "arch": bb.arch,
        "architecture": describe_arch(bb.config),
        "backbone_class": type(bb).__name__,
        "embed_dim": bb.embed_dim,
        "patch_size": bb.patch_size,
        "num_registers": bb.num_registers,
        "num_params": {"total": n_all, "backbone": n_all - n_dec, "mae_decoder": n_dec},
        "has_mae_decoder": bb.has_mae_decoder,
        "preprocess": bb.preprocess.to_dict(),
        "pretrained_cfg": bb.pretrained_cfg.to_dict() if getattr(bb, "pretrained_cfg", None) else None,
        "notes": list(bb.weights_info.notes),
    })
    return report
