"""Segmentation from a user's own label maps on frozen patch features: few-shot propagation, then a light decoder."""

from .decoder import DecoderConfig, PatchDecoder, load_decoder, save_decoder, train_decoder
from .fewshot import SupportSet, canvas_labels, labelmap_from_probs, patch_targets, propagate

__all__ = [
    "DecoderConfig",
    "PatchDecoder",
    "SupportSet",
    "canvas_labels",
    "labelmap_from_probs",
    "load_decoder",
    "patch_targets",
    "propagate",
    "save_decoder",
    "train_decoder",
]
