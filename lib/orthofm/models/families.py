"""The registry of backbone families: how to build each from a ``BackboneConfig`` and a tiny test config.

``backbone_from_config`` dispatches here for everything that is not a timm Eva/DINOv3 trunk, and the
test suite parametrises over ``FAMILIES`` so a new family is covered the moment it is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm

from .backbone import Backbone, BackboneConfig, PreprocessConfig

__all__ = ["FAMILIES", "Family", "build_imported", "tiny_config"]


@dataclass(frozen=True)
class Family:
    name: str
    backbone: str  # class name, for docs / inspect
    weights: tuple[str, ...]  # KNOWN_WEIGHTS records this family loads
    tiny: Callable[[], BackboneConfig]  # a few-thousand-parameter config for tests


def _hf_tiny(model_type: str, **kw) -> Callable[[], BackboneConfig]:
    def make() -> BackboneConfig:
        from .hf import HF_FAMILIES, hf_config_from_dict, hf_config_to_dict

        family = HF_FAMILIES[model_type]
        cfg = hf_config_to_dict(hf_config_from_dict({"model_type": model_type, **kw}))
        return BackboneConfig(arch=family.arch, img_size=int(kw.get("image_size", 32)),
                              preprocess=PreprocessConfig(input_size=int(kw.get("image_size", 32))),
                              model_kwargs={"hf_config": cfg, "with_decoder": model_type == "vit_mae"})

    return make


_TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("dinov3", "EvaBackbone", ("dinov3_lvd1689m", "dinov3_sat493m", "orthofoundation", "timm_dinov3"),
               lambda: BackboneConfig(arch="vit_small_patch16_dinov3_qkvb", img_size=32, model_kwargs=_TINY_VIT)),
        Family("dinov3_swiglu", "EvaBackbone", ("dinov3_lvd1689m",),
               lambda: BackboneConfig(arch="vit_small_plus_patch16_dinov3_qkvb", img_size=32, model_kwargs=_TINY_VIT)),
        Family("timm_dinov2", "TimmViTBackbone", ("dinov2", "timm_vit"),
               lambda: BackboneConfig(arch="vit_small_patch14_dinov2", img_size=28, model_kwargs=_TINY_VIT)),
        Family("timm_dinov2_reg", "TimmViTBackbone", ("dinov2",),
               lambda: BackboneConfig(arch="vit_small_patch14_reg4_dinov2", img_size=28, model_kwargs=_TINY_VIT)),
        Family("hf_vit_mae", "HFMAEBackbone", ("skelex", "hf_vit_mae"),
               _hf_tiny("vit_mae", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=16, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                        decoder_num_attention_heads=2, decoder_intermediate_size=32)),
        Family("hf_dinov2", "HFViTBackbone", ("rad_dino", "hf_dinov2"),
               _hf_tiny("dinov2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                        image_size=28, patch_size=14)),
        Family("hf_dinov2_with_registers", "HFViTBackbone", ("hf_dinov2",),
               _hf_tiny("dinov2_with_registers", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        mlp_ratio=2, image_size=28, patch_size=14, num_register_tokens=4)),
        Family("hf_dinov3_vit", "HFViTBackbone", ("hf_dinov3",),
               _hf_tiny("dinov3_vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, image_size=32, patch_size=16, num_register_tokens=4)),
    )
}


def tiny_config(name: str) -> BackboneConfig:
    return FAMILIES[name].tiny()


def build_imported(config: BackboneConfig) -> Backbone | None:
    """Backbones of imported families; ``None`` when ``config.arch`` belongs to none of them."""
    if config.arch.startswith("hf_"):
        from .hf import ARCH_TO_FAMILY, build_hf

        return build_hf(config) if config.arch in ARCH_TO_FAMILY else None
    if config.arch.startswith("vit_") and timm.is_model(config.arch):
        from .timm_vit import TimmViTBackbone

        return TimmViTBackbone(config)
    return None
