"""Backbones (timm DINOv3-family ViTs and imported foundation models) and their weights."""

from .backbone import (
    Backbone,
    BackboneConfig,
    EvaBackbone,
    PreprocessConfig,
    backbone_from_config,
    create_backbone,
)
from .mae_decoder import MAEDecoder, MAEDecoderConfig

__all__ = [
    "Backbone",
    "BackboneConfig",
    "EvaBackbone",
    "MAEDecoder",
    "MAEDecoderConfig",
    "PreprocessConfig",
    "backbone_from_config",
    "create_backbone",
]
