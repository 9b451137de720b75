"""Hugging Face transformers models (ViTMAE incl. SKELEX, DINOv2 incl. RAD-DINO, DINOv3ViT) as Backbones.

Folders load through ``from_pretrained`` so transformers' own key conversion handles checkpoints saved
by older versions; the loading report is then checked strictly (missing, unexpected or mismatched keys
are an error, not a warning). The wrappers call the HF modules themselves, so features and MAE
reconstructions equal what transformers computes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbone import Backbone, BackboneConfig, PreprocessConfig
from .errors import KeyReport, WeightFormatError
from .pretrained import WeightsCfg, get_weights_cfg, hf_preprocess

__all__ = ["HF_FAMILIES", "HFMAEBackbone", "HFViTBackbone", "hf_config_from_dict", "hf_config_to_dict",
           "load_hf_folder", "read_hf_config"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFFamily:
    arch: str  # OrthoFM arch name stored in BackboneConfig / model cards
    model_type: str  # HF config model_type
    model_class: str  # transformers class for the encoder
    weights: str  # default WeightsCfg name
    title: str


HF_FAMILIES: dict[str, HFFamily] = {
    f.model_type: f
    for f in (
        HFFamily("hf_vit_mae", "vit_mae", "ViTMAEModel", "hf_vit_mae", "Hugging Face ViTMAE (SKELEX format)"),
        HFFamily("hf_dinov2", "dinov2", "Dinov2Model", "hf_dinov2", "Hugging Face DINOv2 (RAD-DINO format)"),
        HFFamily("hf_dinov2_with_registers", "dinov2_with_registers", "Dinov2WithRegistersModel", "hf_dinov2",
                 "Hugging Face DINOv2 with registers"),
        HFFamily("hf_dinov3_vit", "dinov3_vit", "DINOv3ViTModel", "hf_dinov3", "Hugging Face DINOv3ViT"),
    )
}
ARCH_TO_FAMILY = {f.arch: f for f in HF_FAMILIES.values()}
# Heads a feature backbone may drop when a folder holds a task model (classifier / pooler weights).
_DROPPABLE = ("classifier.", "pooler.", "head.")


def hf_config_from_dict(d: dict[str, Any]):
    from transformers import CONFIG_MAPPING

    model_type = d.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise WeightFormatError(f"transformers has no config class for model_type {model_type!r}")
    return CONFIG_MAPPING[model_type].from_dict(dict(d))


def hf_config_to_dict(hf_config) -> dict[str, Any]:
    """The HF config as it reads back from JSON (model cards store it; e.g. id2label keys become strings)."""
    return json.loads(hf_config.to_json_string(use_diff=False))


def _transformers_class(name: str):
    import transformers

    return getattr(transformers, name)


def _native_size(hf_config) -> tuple[int, int]:
    size = hf_config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


class HFViTBackbone(Backbone):
    """DINOv2 / DINOv2-with-registers / DINOv3ViT encoders: [CLS, registers, patches] after the final norm."""

    def __init__(self, config: BackboneConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.arch = config.arch
        family = ARCH_TO_FAMILY[config.arch]
        hf_config = hf_config_from_dict(config.model_kwargs["hf_config"])
        self.model = model if model is not None else _transformers_class(family.model_class)(hf_config)
        cfg = self.model.config
        self.embed_dim = int(cfg.hidden_size)
        self.patch_size = int(cfg.patch_size)
        self.num_registers = int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.preprocess = config.preprocess

    def _final_norm(self) -> nn.Module:
        return self.model.norm if hasattr(self.model, "norm") else self.model.layernorm

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    def _split(self, tokens: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        p = 1 + self.num_registers
        return {"cls": tokens[:, 0], "registers": tokens[:, 1:p],
                "patches": tokens[:, p:].reshape(tokens.shape[0], *grid, -1)}

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        grid = self._grid(x)
        return self._split(self.model(pixel_values=x).last_hidden_state, grid)

    def forward_intermediates(
        self, x: torch.Tensor, layers: int | Sequence[int] = 1
    ) -> list[dict[str, torch.Tensor]]:
        grid = self._grid(x)
        hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
        norm = self._final_norm()
        return [self._split(norm(hidden[i]), grid) for i in _take(len(hidden), layers)]


class HFMAEBackbone(Backbone):
    """ViTMAE encoder (all patches visible for features) + HF's decoder for masked reconstruction."""

    def __init__(self, config: BackboneConfig, model: nn.Module | None = None, decoder: nn.Module | None = None,
                 with_decoder: bool | None = None) -> None:
        super().__init__()
        from transformers.models.vit_mae.modeling_vit_mae import ViTMAEDecoder, ViTMAEModel

        self.config = config
        self.arch = config.arch
        hf_config = hf_config_from_dict(config.model_kwargs["hf_config"])
        self.model = model if model is not None else ViTMAEModel(hf_config)
        if with_decoder is None:
            with_decoder = bool(config.model_kwargs.get("with_decoder", True))
        if decoder is None and with_decoder:
            decoder = ViTMAEDecoder(self.model.config, num_patches=self.model.embeddings.patch_embeddings.num_patches)
        self.mae_decoder = decoder
        cfg = self.model.config
        self.embed_dim = int(cfg.hidden_size)
        self.patch_size = int(cfg.patch_size)
        self.num_registers = 0
        self.preprocess = config.preprocess

    def _interpolate(self, x: torch.Tensor) -> bool:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return (h, w) != _native_size(self.model.config)

    def _encode_all(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """HF's embedding path without the random masking; returns the input of every layer + the output."""
        emb = self.model.embeddings
        h, w = x.shape[-2:]
        patches = emb.patch_embeddings(x)
        # same call and same condition as ViTMAEEmbeddings.forward, so positions match HF exactly
        pos = emb.interpolate_pos_encoding(patches, h, w) if self._interpolate(x) else emb.position_embeddings
        patches = patches + pos[:, 1:, :]
        cls = (emb.cls_token + pos[:, :1, :]).expand(x.shape[0], -1, -1)
        hidden = torch.cat([cls, patches], dim=1)
        states = [hidden]
        for layer in self.model.layers:
            hidden = layer(hidden, None)
            states.append(hidden)
        return states, (h // self.patch_size, w // self.patch_size)

    @staticmethod
    def _split(tokens: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {"cls": tokens[:, 0], "registers": tokens[:, :0],
                "patches": tokens[:, 1:].reshape(tokens.shape[0], *grid, -1)}

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        states, grid = self._encode_all(x)
        return self._split(self.model.layernorm(states[-1]), grid)

    def forward_intermediates(
        self, x: torch.Tensor, layers: int | Sequence[int] = 1
    ) -> list[dict[str, torch.Tensor]]:
        states, grid = self._encode_all(x)
        hidden = states[1:]
        return [self._split(self.model.layernorm(hidden[i]), grid) for i in _take(len(hidden), layers)]

    def mae_reconstruct(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """HF ``ViTMAEForPreTraining`` logits (B, L, p*p*C) and mask (B, L; 1 = masked) for ``noise``."""
        if self.mae_decoder is None:
            raise NotImplementedError(f"{self.arch}: this folder has no MAE decoder (ViTMAEModel weights only)")
        interpolate = self._interpolate(x)
        out = self.model(pixel_values=x, noise=noise, interpolate_pos_encoding=interpolate)
        logits = self.mae_decoder(out.last_hidden_state, out.ids_restore, interpolate_pos_encoding=interpolate).logits
        return logits, out.mask


def _take(n: int, layers: int | Sequence[int]) -> list[int]:
    if isinstance(layers, int):
        if not 0 < layers <= n:
            raise ValueError(f"layers={layers}: the model has {n} blocks")
        return list(range(n - layers, n))
    out = []
    for i in layers:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise ValueError(f"layer index {i} out of range for {n} blocks")
        out.append(j)
    return out


# -- folders ----------------------------------------------------------------------------------------

def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightFormatError(f"{path}: unreadable Hugging Face config ({exc})", path=str(folder)) from exc
    if not isinstance(cfg, dict):
        raise WeightFormatError(f"{path}: not a JSON object", path=str(folder))
    return cfg


def _weights_cfg(folder: Path, family: HFFamily) -> WeightsCfg:
    name = folder.resolve().name.lower()
    if family.model_type == "vit_mae" and "skelex" in name:
        return get_weights_cfg("skelex")
    if family.model_type == "dinov2" and "rad" in name and "dino" in name:
        return get_weights_cfg("rad_dino")
    return get_weights_cfg(family.weights)


def load_hf_folder(folder: Path, arch: str | None = None) -> Backbone:
    """Load a Hugging Face model folder (``config.json`` + weights) strictly, in float32."""
    cfg = read_hf_config(folder)
    model_type = cfg.get("model_type")
    family = HF_FAMILIES.get(model_type)
    if family is None:
        raise WeightFormatError(
            f"{folder}: Hugging Face model_type {model_type!r} is not supported; supported: "
            f"{', '.join(sorted(HF_FAMILIES))}", path=str(folder), looks_like=f"Hugging Face {model_type} folder",
        )
    if arch is not None and arch != family.arch:
        raise WeightFormatError(
            f"{folder}: arch={arch!r} does not fit a Hugging Face {model_type} folder (its arch is {family.arch!r})",
            path=str(folder), looks_like=family.title,
        )
    with_decoder = family.model_type == "vit_mae" and cfg.get("architectures", ["ViTMAEForPreTraining"]) != ["ViTMAEModel"]
    cls_name = "ViTMAEForPreTraining" if with_decoder else family.model_class
    model_cls = _transformers_class(cls_name)
    try:
        with _quiet_progress():
            # ignore_mismatched_sizes=True only so that transformers *reports* every mismatch (key, file
            # shape, model shape) instead of raising on the first; any mismatch is an error below.
            model, info = model_cls.from_pretrained(
                str(folder), local_files_only=True, output_loading_info=True, dtype=torch.float32,
                trust_remote_code=False, ignore_mismatched_sizes=True,
            )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # transformers colours its load report
        raise WeightFormatError(
            f"{folder}: looks like a {family.title} folder, but transformers could not load it: {text}",
            path=str(folder), looks_like=family.title,
        ) from exc
    report = KeyReport(
        missing=sorted(info.get("missing_keys", [])),
        unexpected=sorted(k for k in info.get("unexpected_keys", []) if not k.startswith(_DROPPABLE)),
        mismatched=sorted((k, tuple(a), tuple(b)) for k, a, b in _mismatches(info)),
    )
    if not report.ok:
        raise WeightFormatError(
            f"{folder}: looks like a {family.title} folder, but the weights do not fit its config.json: "
            f"{report.describe()}", path=str(folder), looks_like=family.title, report=report,
        )
    weights, note = hf_preprocess(folder, _weights_cfg(folder, family), _native_size(model.config)[0])
    log.info("%s: %s", folder, note)
    config = BackboneConfig(
        arch=family.arch, img_size=_native_size(model.config)[0], preprocess=weights.preprocess,
        model_kwargs={"hf_config": hf_config_to_dict(model.config), "with_decoder": with_decoder},
    )
    if family.model_type == "vit_mae":
        bb: Backbone = HFMAEBackbone(config, model=model.vit if with_decoder else model,
                                     decoder=model.decoder if with_decoder else None, with_decoder=with_decoder)
    else:
        bb = HFViTBackbone(config, model=model)
    bb.pretrained_cfg = weights
    return bb.eval()


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No progress bar or load-report table from transformers while loading (both restored afterwards):
    OrthoFM raises its own error listing every problem."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


def _mismatches(info: dict) -> list[tuple[str, Any, Any]]:
    out = []
    for item in info.get("mismatched_keys", []) or []:
        if isinstance(item, (tuple, list)) and len(item) == 3:
            out.append((str(item[0]), tuple(item[1]), tuple(item[2])))
        else:
            out.append((str(item), (), ()))
    return out


def build_hf(config: BackboneConfig) -> Backbone:
    """Random-init HF backbone from a stored config (OrthoFM format load, tests)."""
    family = ARCH_TO_FAMILY[config.arch]
    if "hf_config" not in config.model_kwargs:
        raise ValueError(f"{config.arch}: model_kwargs['hf_config'] (the HF config dict) is required")
    if family.model_type == "vit_mae":
        return HFMAEBackbone(config)
    return HFViTBackbone(config)


def default_preprocess(arch: str) -> PreprocessConfig:
    return get_weights_cfg(ARCH_TO_FAMILY[arch].weights).preprocess
