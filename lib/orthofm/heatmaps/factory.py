"""Build a HeatmapEngine from paths: the one call the CLI and the MONAI Label app make."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .bank import BANK_CARD, NormalBank
from .engine import HeatmapConfig, HeatmapEngine

__all__ = ["BANKS_DIR", "create_engine", "default_bank_path"]

BANKS_DIR = "banks"


def default_bank_path(model_dir: str | Path, anatomy: str) -> Path | None:
    """``<model_dir>/banks/<anatomy>`` when it holds a bank (the default model ships a knee bank)."""
    path = Path(model_dir) / BANKS_DIR / anatomy
    return path if (path / BANK_CARD).is_file() else None


def create_engine(
    backbone: torch.nn.Module | str | os.PathLike[str],
    method: str = "patchknn",
    bank: NormalBank | str | os.PathLike[str] | None = None,
    *,
    anatomy: str = "knee",
    config: HeatmapConfig | None = None,
) -> HeatmapEngine:
    """Engine for ``method`` on a backbone object or a backbone folder / checkpoint.

    Without ``bank``, methods that need one use ``<backbone folder>/banks/<anatomy>`` if it exists.
    """
    model_dir = None
    if not isinstance(backbone, torch.nn.Module):
        from ..models import load_backbone

        model_dir = Path(backbone)
        backbone = load_backbone(model_dir)
    if isinstance(bank, (str, os.PathLike)):
        bank = NormalBank.load(bank)
    if bank is None and method in ("patchknn", "both") and model_dir is not None and model_dir.is_dir():
        found = default_bank_path(model_dir, anatomy)
        if found is not None:
            bank = NormalBank.load(found)
    return HeatmapEngine(backbone, method, bank, config)
