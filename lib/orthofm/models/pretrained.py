"""What each family of public weights expects and where it comes from (timm ``PretrainedCfg`` style).

The record travels with a loaded backbone as ``bb.pretrained_cfg`` so users see the source and
licence of the weights they run, and ``bb.preprocess`` is derived from it (or from a Hugging Face
folder's own ``preprocessor_config.json``, which wins when present).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .backbone import IMAGENET_MEAN, IMAGENET_STD, ORTHOFM_MEAN, ORTHOFM_STD, PreprocessConfig

__all__ = ["KNOWN_WEIGHTS", "WeightsCfg", "get_weights_cfg", "hf_preprocess"]

SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)


@dataclass(frozen=True)
class WeightsCfg:
    """Metadata of one family of weights; field names follow timm's ``PretrainedCfg`` where they exist."""

    name: str
    title: str
    source: str  # where users download it themselves (OrthoFM never downloads weights)
    license: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    paper: str = ""
    notes: str = ""

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(mean=tuple(self.mean), std=tuple(self.std), input_size=int(self.input_size[-1]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_DINOV3_LICENSE = "dinov3-license (custom Meta licence covering the weights; accept it on the download page)"

KNOWN_WEIGHTS: dict[str, WeightsCfg] = {
    w.name: w
    for w in (
        WeightsCfg(
            name="dinov3_lvd1689m",
            title="DINOv3 ViT (web images, LVD-1689M)",
            source="https://github.com/facebookresearch/dinov3 (weights via the request form linked there; "
            "timm copies: https://huggingface.co/timm, HF copies: https://huggingface.co/facebook)",
            license=_DINOV3_LICENSE,
            input_size=(3, 256, 256),
            paper="https://arxiv.org/abs/2508.10104",
            notes="official state dict (storage_tokens, blocks.N.attn.qkv); converted with timm's eva.checkpoint_filter_fn",
        ),
        WeightsCfg(
            name="dinov3_sat493m",
            title="DINOv3 ViT-L (satellite images, SAT-493M)",
            source="https://github.com/facebookresearch/dinov3",
            license=_DINOV3_LICENSE,
            input_size=(3, 256, 256),
            mean=SAT_MEAN,
            std=SAT_STD,
            paper="https://arxiv.org/abs/2508.10104",
            notes="recognised by its local_cls_norm.* keys on a 1024-wide ViT; not useful for radiographs",
        ),
        WeightsCfg(
            name="orthofoundation",
            title="OrthoFoundation (DINOv3-L continued-pretrained on knee X-ray + MRI)",
            source="https://github.com/ytrsk/OrthoFoundation (OrthoFoudation-L.pth), "
            "https://github.com/ytrsk/OrthoFoundation_KneeModel (OrthoFoundation-MSK-5M.pth)",
            license="no licence file in the repositories; initialised from DINOv3-L, so the DINOv3 License "
            "terms apply as well - check with the authors before any non-research use",
            input_size=(3, 224, 224),
            paper="https://arxiv.org/abs/2601.18250",
            notes="DINOv3 official layout under 'backbone.' or 'module.backbone.backbone.' (DDP wrapper with a "
            "DINO projection head that is dropped); ImageNet normalisation as in its training augmentation",
        ),
        WeightsCfg(
            name="skelex",
            title="SKELEX (ViT-L MAE on 1.2M musculoskeletal radiographs)",
            source="https://github.com/skhoha/SKELEX (Google Drive folder linked in its README)",
            license="CC-BY-NC-ND-4.0 (repository); weights for academic, non-commercial use",
            input_size=(3, 224, 224),
            paper="https://arxiv.org/abs/2602.03076",
            notes="Hugging Face ViTMAEForPreTraining folder; its preprocessor_config.json (if shipped) sets "
            "mean/std, otherwise ImageNet mean/std like the facebook/vit-mae checkpoints it starts from",
        ),
        WeightsCfg(
            name="rad_dino",
            title="RAD-DINO (DINOv2 ViT-B/14 on chest X-rays)",
            source="https://huggingface.co/microsoft/rad-dino",
            license="MIT (earlier revisions: MSRLA; check the revision you download)",
            input_size=(3, 518, 518),
            paper="https://arxiv.org/abs/2401.10815",
            notes="Hugging Face Dinov2Model folder; mean/std/size come from its preprocessor_config.json",
        ),
        WeightsCfg(
            name="hf_dinov2",
            title="DINOv2 (Hugging Face Dinov2Model / Dinov2WithRegistersModel folder)",
            source="https://huggingface.co/facebook/dinov2-base (and -small/-large/-giant, -with-registers)",
            license="apache-2.0",
            input_size=(3, 224, 224),
            paper="https://arxiv.org/abs/2304.07193",
        ),
        WeightsCfg(
            name="hf_dinov3",
            title="DINOv3 ViT (Hugging Face DINOv3ViTModel folder)",
            source="https://huggingface.co/facebook/dinov3-vits16-pretrain-lvd1689m (and other sizes)",
            license=_DINOV3_LICENSE,
            input_size=(3, 224, 224),
            paper="https://arxiv.org/abs/2508.10104",
        ),
        WeightsCfg(
            name="hf_vit_mae",
            title="MAE ViT (Hugging Face ViTMAE folder)",
            source="https://huggingface.co/facebook/vit-mae-base (and -large/-huge)",
            license="apache-2.0 (facebook/vit-mae-*); fine-tunes carry their own licence",
            input_size=(3, 224, 224),
            paper="https://arxiv.org/abs/2111.06377",
        ),
        WeightsCfg(
            name="dinov2",
            title="DINOv2 ViT (official or timm state dict, timm VisionTransformer)",
            source="https://github.com/facebookresearch/dinov2, https://huggingface.co/timm "
            "(vit_*_patch14_dinov2.lvd142m, vit_*_patch14_reg4_dinov2.lvd142m)",
            license="apache-2.0",
            input_size=(3, 518, 518),
            paper="https://arxiv.org/abs/2304.07193",
            notes="converted with timm's vision_transformer.checkpoint_filter_fn",
        ),
        WeightsCfg(
            name="timm_vit",
            title="timm VisionTransformer state dict",
            source="https://huggingface.co/timm",
            license="see the timm model card of the weights",
            input_size=(3, 224, 224),
        ),
        WeightsCfg(
            name="timm_dinov3",
            title="DINOv3 ViT in timm layout (reg_token, gamma_1, q_bias/v_bias)",
            source="https://huggingface.co/timm (vit_*_patch16_dinov3*.lvd1689m)",
            license=_DINOV3_LICENSE,
            input_size=(3, 256, 256),
            paper="https://arxiv.org/abs/2508.10104",
        ),
        WeightsCfg(
            name="orthofm",
            title="OrthoFM checkpoint (backbone.safetensors + model_card.json)",
            source="made by this project (orthofm weights convert / the pretraining job)",
            license="see the model card's sections",
            input_size=(3, 224, 224),
            mean=ORTHOFM_MEAN,
            std=ORTHOFM_STD,
            notes="mean/std/input size are read from the model card",
        ),
    )
}


def get_weights_cfg(name: str) -> WeightsCfg:
    try:
        return KNOWN_WEIGHTS[name]
    except KeyError:
        raise ValueError(f"unknown weights family {name!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}") from None


def hf_preprocess(folder: Path, default: WeightsCfg, native_size: int | None = None) -> tuple[WeightsCfg, str]:
    """Mean/std/size from a Hugging Face folder's ``preprocessor_config.json``, else ``default``'s
    mean/std and the model's own ``image_size`` (``native_size``).

    Returns the (possibly updated) record and a note saying where the numbers came from.
    """
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        if native_size:
            default = replace(default, input_size=(3, int(native_size), int(native_size)))
        return default, f"no preprocessor_config.json: using {default.name} defaults (mean {default.mean})"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable preprocessor_config.json ({exc})") from exc
    mean, std = default.mean, default.std
    if cfg.get("do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean = tuple(float(v) for v in cfg.get("image_mean", mean))
        std = tuple(float(v) for v in cfg.get("image_std", std))
        if len(mean) == 1:
            mean, std = mean * 3, std * 3
    size = _hf_size(cfg.get("crop_size") if cfg.get("do_center_crop") else None) or _hf_size(cfg.get("size"))
    size = size or default.input_size[-1]
    updated = replace(default, mean=mean, std=std, input_size=(3, size, size))
    return updated, f"mean/std/size from {path.name}"


def _hf_size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width", "longest_edge"):
            if value.get(key):
                return int(value[key])
    return None
