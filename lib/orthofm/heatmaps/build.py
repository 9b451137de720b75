"""Build a normal bank from images a user marks as normal (for knees: KL 0 of the training split).

Steps: hold out a calibration subset (by patient group, so a patient's two knees stay on one side) ->
patch tokens of the remaining images, padding patches dropped -> greedy k-centre coreset -> bank ->
calibration: the held-out normals are scored against the bank (and by reconstruction when the backbone
has an MAE decoder), giving the normal reference for thresholds and for combining methods.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..heads.runtime import precision_dtype
from ..io import ImageRecord
from .bank import BankCard, NormalBank
from .coreset import greedy_coreset
from .engine import GLOBAL, HeatmapConfig, HeatmapEngine, image_cls_token
from .fingerprint import backbone_fingerprint, backbone_id
from .inputs import ModelInputs, read_quietly
from .scores import calibration_entry

__all__ = ["BankBuildConfig", "build_bank", "build_bank_from_folder", "calibrate", "split_calibration"]

log = logging.getLogger(__name__)

Source = str | Path | list[Path] | ImageRecord


@dataclass
class BankBuildConfig:
    anatomy: str = "unknown"
    coreset_ratio: float = 0.1  # fraction of normal patches kept
    max_patches: int | None = None  # hard cap on the kept patches (bank size = max_patches x dim x 2 bytes)
    projection_dim: int = 128  # random projection for the coreset distances
    calibration_fraction: float = 0.1  # normal images held out to calibrate thresholds (0 = none)
    max_calibration_images: int = 100
    group_regex: str | None = None  # patient id from the file stem, e.g. r"^(\d+)[LR]$" for the knee set
    seed: int = 0
    dtype: str = "float16"
    size: int | None = None  # model canvas; None = the backbone's input size


def _name(src: Source) -> str:
    if isinstance(src, ImageRecord):
        src = src.source
    if isinstance(src, list):
        return str(Path(src[0]).parent) if src else ""
    return str(src)


def _group(src: Source, pattern: re.Pattern[str] | None) -> str:
    stem = Path(_name(src)).name.split(".")[0]
    if pattern is not None:
        m = pattern.match(stem)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return stem


def split_calibration(
    sources: Sequence[Source], fraction: float, max_images: int, seed: int, group_regex: str | None = None
) -> tuple[list[Source], list[Source]]:
    """(bank sources, calibration sources), split by group so no patient is on both sides."""
    if not 0 <= fraction < 1:
        raise ValueError(f"calibration fraction must be in [0, 1), got {fraction}")
    pattern = re.compile(group_regex) if group_regex else None
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(_group(s, pattern), []).append(i)
    keys = sorted(groups)
    if fraction == 0 or len(keys) < 2:
        return list(sources), []
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    target = min(max_images, max(1, round(fraction * len(sources))))
    calib: list[int] = []
    for k in keys[:-1]:  # always leave at least one group for the bank
        if len(calib) >= target:
            break
        calib.extend(groups[k])
    calib_set = set(calib)
    return [s for i, s in enumerate(sources) if i not in calib_set], [sources[i] for i in sorted(calib_set)]


def _load(src: Source, reader: Callable[[Source], ImageRecord]) -> ImageRecord:
    return src if isinstance(src, ImageRecord) else reader(src)


def build_bank(
    backbone: torch.nn.Module,
    sources: Sequence[Source],
    config: BankBuildConfig | None = None,
    *,
    reader: Callable[[Source], ImageRecord] = read_quietly,
    heatmap_config: HeatmapConfig | None = None,
) -> NormalBank:
    """Build (not save) a normal bank from image paths or records of normal anatomy."""
    config = config or BankBuildConfig()
    if not sources:
        raise ValueError("no normal images given to build a bank from")
    if not 0 < config.coreset_ratio <= 1:
        raise ValueError(f"coreset ratio must be in (0, 1], got {config.coreset_ratio}")
    hm_config = heatmap_config or HeatmapConfig()
    if config.size is not None:
        hm_config.size = config.size
    bank_src, calib_src = split_calibration(
        sources, config.calibration_fraction, config.max_calibration_images, config.seed, config.group_regex
    )
    inputs = ModelInputs(backbone, hm_config.size, hm_config.batch_size, hm_config.min_patch_coverage,
                         dtype=precision_dtype(hm_config.precision))

    chunks: list[np.ndarray] = []
    image_cls: list[np.ndarray] = []
    t0 = time.monotonic()
    for i, src in enumerate(bank_src):
        record = _load(src, reader)
        prepared = inputs.prepare(record)
        valid, _ = inputs.valid_patches(prepared)
        patches, cls = inputs.features(inputs.batch(prepared))
        chunks.append(patches.numpy()[valid].astype(np.float16))
        image_cls.append(image_cls_token(cls.numpy()))
        if (i + 1) % 50 == 0 or i + 1 == len(bank_src):
            rate = (i + 1) / (time.monotonic() - t0)
            log.info(
                "bank tokens %d/%d images (%.1f img/s, ETA %.0f s)",
                i + 1,
                len(bank_src),
                rate,
                (len(bank_src) - i - 1) / rate,
            )
    feats = np.concatenate(chunks).astype(np.float32)
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    n_total = feats.shape[0]
    n_keep = max(1, int(np.ceil(config.coreset_ratio * n_total)))
    if config.max_patches is not None:
        n_keep = min(n_keep, int(config.max_patches))
    log.info("coreset: keeping %d of %d normal patches", n_keep, n_total)
    keep = greedy_coreset(feats, n_keep, projection_dim=config.projection_dim, seed=config.seed)
    names = sorted(_name(s) for s in sources)
    card = BankCard(
        backbone_id=backbone_id(backbone),
        backbone_fingerprint=backbone_fingerprint(backbone),
        anatomy=config.anatomy,
        input_size=inputs.size,
        dim=int(feats.shape[1]),
        n_source_images=len(bank_src),
        n_patches_total=int(n_total),
        n_patches=int(n_keep),
        coreset_ratio=float(n_keep / n_total),
        projection_dim=config.projection_dim,
        seed=config.seed,
        dtype=config.dtype,
        sources_sha256=hashlib.sha256("\n".join(names).encode()).hexdigest(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        orthofm_version=__version__,
        notes=f"{len(calib_src)} normal images held out for calibration",
    )
    bank = NormalBank(feats[keep], card, np.stack(image_cls))
    if calib_src:
        card.calibration = calibrate(backbone, bank, [_load(s, reader) for s in calib_src], hm_config)
    return bank


def calibrate(
    backbone: torch.nn.Module, bank: NormalBank, records: Sequence[ImageRecord], config: HeatmapConfig
) -> dict[str, dict]:
    """Normal reference per method from held-out normal records (patch kNN always, recon if possible)."""
    cfg = HeatmapConfig(**{**config.__dict__, "check_bank_backbone": False})
    engines = {"patchknn": HeatmapEngine(backbone, "patchknn", bank, cfg)}
    if getattr(backbone, "has_mae_decoder", False):
        engines["recon"] = HeatmapEngine(backbone, "recon", None, cfg)
    values: dict[str, list[np.ndarray]] = {m: [] for m in engines}
    scores: dict[str, list[float]] = {m: [] for m in engines}
    global_scores: list[float] = []
    t0 = time.monotonic()
    for i, record in enumerate(records):
        prepared = None
        for m, engine in engines.items():
            prepared = prepared or engine.prepare(record)
            ps = engine.patch_scores(record, prepared)
            values[m].append(engine.canvas_maps(ps)[m][ps.canvas_valid])
            scores[m].append(engine.image_score(ps.patch[m], ps.valid))
            if ps.global_score is not None:
                global_scores.append(ps.global_score)
        if (i + 1) % 25 == 0 or i + 1 == len(records):
            rate = (i + 1) / (time.monotonic() - t0)
            log.info("calibration %d/%d images (%.1f img/s)", i + 1, len(records), rate)
    calibration = {m: calibration_entry(values[m], scores[m]) for m in engines}
    if global_scores:  # image-level only: no map values to scale
        calibration[GLOBAL] = {"image_scores": sorted(global_scores), "n_images": len(global_scores)}
    return calibration


def build_bank_from_folder(
    backbone: torch.nn.Module | str | Path,
    images: str | Path,
    out: str | Path,
    config: BankBuildConfig | None = None,
) -> NormalBank:
    """``orthofm heatmap build-bank``: every image under ``images`` -> bank saved (atomically) at ``out``."""
    from .batch import find_inputs

    if not isinstance(backbone, torch.nn.Module):
        from ..models import load_backbone

        backbone = load_backbone(backbone)
    sources = find_inputs(images)
    if not sources:
        raise FileNotFoundError(f"no images found in {images}")
    bank = build_bank(backbone, sources, config)
    bank.save(out)
    return bank
