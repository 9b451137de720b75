"""Turn a pretraining run into a backbone in OrthoFM's format (weights + model card)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from orthofm.utils.runtime import default_device, resolve_precision

from .config import PretrainConfig, load_config
from .meta_arch import SSLMetaArch
from .train import CHECKPOINT, METRICS, build_backbone


def load_run(run: str | Path) -> tuple[SSLMetaArch, dict[str, Any]]:
    """The meta-architecture of a run with its last checkpoint's weights."""
    run = Path(run)
    state = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    config = load_config(run / "config.yaml")
    config.init = None  # weights come from the checkpoint
    meta = SSLMetaArch(config, build_backbone(config))
    meta.load_state_dict(state["model"])
    return meta.eval(), state


def run_summary(run: str | Path, config: PretrainConfig, step: int) -> dict[str, Any]:
    rows = []
    metrics = Path(run) / METRICS
    if metrics.exists():
        with open(metrics, newline="") as fh:
            rows = list(csv.DictReader(fh))
    last = rows[-1] if rows else {}
    return {
        "objective": config.objective,
        "steps": step,
        "epochs_completed": float(last.get("epoch", 0)) + 1 if last else 0,
        "batch_size_per_process": config.batch_size,
        "base_lr": config.base_lr,
        "mask_ratio": config.mask_ratio,
        "resolution_schedule": [list(x) for x in config.resolution_schedule],
        "precision": resolve_precision(config.precision, default_device()),  # what it trained in, not "auto"
        "final_loss": float(last["loss"]) if last else None,
        "mean_img_per_s_last_log": float(last["img_per_s"]) if last else None,
    }


def export_run(run: str | Path, folder: str | Path, card: dict[str, Any] | None = None,
               dtype: torch.dtype = torch.float16) -> Path:
    from orthofm.models import save_orthofm

    meta, state = load_run(run)
    backbone = meta.export_backbone()
    full_card = {"recipe": run_summary(run, meta.config, int(state["step"]))}
    full_card.update(card or {})
    return save_orthofm(backbone, folder, full_card, dtype=dtype)
