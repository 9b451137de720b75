"""Backbones (timm DINOv3-family ViTs and imported foundation models) and their weights."""

from .backbone import (
    Backbone,
    BackboneConfig,
    EvaBackbone,
    PreprocessConfig,
    backbone_from_config,
    create_backbone,
)
from .errors import WeightFormatError
from .families import FAMILIES
from .hf import HFMAEBackbone, HFViTBackbone
from .loading import WeightsInfo, describe_arch, detect_format, inspect_weights, load_backbone
from .mae_decoder import MAEDecoder, MAEDecoderConfig
from .orthofm_format import read_model_card, save_orthofm
from .pretrained import KNOWN_WEIGHTS, WeightsCfg
from .timm_vit import TimmViTBackbone

__all__ = [
    "FAMILIES",
    "KNOWN_WEIGHTS",
    "Backbone",
    "BackboneConfig",
    "EvaBackbone",
    "HFMAEBackbone",
    "HFViTBackbone",
    "MAEDecoder",
    "MAEDecoderConfig",
    "PreprocessConfig",
    "TimmViTBackbone",
    "WeightFormatError",
    "WeightsCfg",
    "WeightsInfo",
    "backbone_from_config",
    "create_backbone",
    "describe_arch",
    "detect_format",
    "inspect_weights",
    "load_backbone",
    "read_model_card",
    "save_orthofm",
]
