"""Pretraining configuration: one dataclass defines every key; YAML files and ``--set`` override a few.

The resolved configuration is saved beside every checkpoint so a run can always be reproduced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from orthofm.models import MAEDecoderConfig
from orthofm.utils.runtime import resolve_precision

from .augment import AugmentConfig

CENTERINGS = ("ema", "sinkhorn")  # how the teacher's targets are made (losses/centering.py)
CENTER_STARTS = ("first_batch", "zero")  # where the EMA centre starts (losses/centering.py)


@dataclass
class DINOConfig:
    out_dim: int = 4096
    hidden_dim: int = 1024
    bottleneck_dim: int = 256
    global_size: int = 160
    local_size: int = 96
    local_crops: int = 4
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    teacher_temp: float = 0.04
    teacher_temp_final: float = 0.07
    teacher_temp_warmup_epochs: float = 10.0
    momentum: float = 0.996
    momentum_final: float = 1.0
    ibot_weight: float = 0.0
    ibot_mask_ratio: tuple[float, float] = (0.1, 0.5)
    koleo_weight: float = 0.0
    # prototypes (the head's last layer) fixed for the first epochs, as in DINO/iBOT/DINOv2: trained from step 0
    # they turn away from the direction all images share, and the student turns uniform (measured collapse)
    freeze_last_layer_epochs: float = 1.0
    # teacher targets: "ema" (DINO/iBOT centring) or "sinkhorn" (Sinkhorn-Knopp, DINOv2; balanced prototype
    # usage within each batch, which does not need the large batches an EMA centre does)
    centering: str = "ema"
    # the EMA centre starts at the first batch's mean; "zero" is the recipe before that fix (the committed
    # stage 2 was trained with it), kept so that run can be reproduced
    center_start: str = "first_batch"

    def __post_init__(self) -> None:  # a typo fails at once, not after the data has been decoded
        if self.centering not in CENTERINGS:
            raise ValueError(f"dino.centering must be one of {CENTERINGS}, got {self.centering!r}")
        if self.center_start not in CENTER_STARTS:
            raise ValueError(f"dino.center_start must be one of {CENTER_STARTS}, got {self.center_start!r}")


@dataclass
class PretrainConfig:
    data: list[str] = field(default_factory=list)
    out: str = "runs/pretrain"
    arch: str = "vit_small_patch16_dinov3_qkvb"
    init: str | None = None  # continue from any checkpoint ``load_backbone`` reads
    objective: str = "mae"  # mae | dino | mae+dino
    epochs: float = 50.0
    batch_size: int = 64  # per process
    base_lr: float = 1.5e-4  # scaled by global batch / 256
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    min_lr_ratio: float = 0.02
    grad_clip: float = 3.0
    drop_path_rate: float = 0.0
    # (fraction of training, input size) pairs: low resolution early is much cheaper
    resolution_schedule: list[tuple[float, int]] = field(default_factory=lambda: [(0.0, 160), (0.7, 224)])
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    decoder: MAEDecoderConfig = field(default_factory=MAEDecoderConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # "auto": bf16 autocast where the device multiplies bf16 natively, else fp32 (emulated bf16 is ~3x slower)
    precision: str = "auto"  # auto | bf16 | fp32
    seed: int = 0
    max_side: int = 320
    cache_dir: str | None = None
    checkpoint_every_minutes: float = 5.0
    checkpoint_every_steps: int = 0  # > 0 overrides the time-based interval (tests)
    log_every_steps: int = 10
    max_steps: int = 0  # > 0 stops early (tests, smoke runs)
    # progress probe (``orthofm.ssl.progress_probe``): labelled folder-per-class (or labels.csv) sets; the
    # exported backbone is probed every ``probe_every_epochs`` (0: at the end only) into probe.csv
    probe_train: str | None = None
    probe_val: str | None = None
    probe_every_epochs: float = 0.0

    def __post_init__(self) -> None:  # a typo fails at once, not after the data has been decoded
        resolve_precision(self.precision)
        if bool(self.probe_train) != bool(self.probe_val):
            raise ValueError("the progress probe needs both probe_train and probe_val (labelled image sets)")
        if self.probe_every_epochs > 0 and not self.probe_train:
            raise ValueError("probe_every_epochs is set but probe_train / probe_val are not")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    nested = {"decoder": MAEDecoderConfig, "dino": DINOConfig, "augment": AugmentConfig}
    for key, value in values.items():
        if key in nested and isinstance(value, dict):
            value = _build(nested[key], value)
        elif isinstance(value, list) and key != "data" and key != "resolution_schedule":
            value = tuple(value)
        elif key == "resolution_schedule":
            value = [tuple(v) for v in value]
        kwargs[key] = _as_float(value, key) if known[key].type in ("float", float) else value
    return cls(**kwargs)


def _as_float(value: Any, key: str) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a float key takes it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    return value


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **kwargs: Any) -> PretrainConfig:
    """Defaults <- YAML file <- ``key.sub=value`` overrides (values parsed as YAML) <- kwargs."""
    values = PretrainConfig().to_dict()
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        for key, value in loaded.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key].update(value)
            else:
                values[key] = value
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), yaml.safe_load(raw))
    for key, value in kwargs.items():
        if value is not None:
            values[key] = value
    return _build(PretrainConfig, values)


def save_config(config: PretrainConfig, path: str | Path) -> None:
    from orthofm.utils.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(_plain(config.to_dict()), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
