"""Does a heatmap method find abnormality? Image level on knee KL grades, pixel level on synthetic lesions.

* Image level: score every image of the split (bank built from *train* KL 0 only, so no val image is in
  it); AUROC of KL 0 vs KL 3-4, Spearman correlation of the score with KL 0-4.
* Pixel level: synthetic lesions (``orthofm.evaluate.lesions``; kinds cycled per image) inserted into
  the split's KL 0 radiographs; pixel AUROC and AUPRO (FPR <= 0.3) of each method's map on the original
  grid, overall and per lesion kind.
* Combination: the two methods' image scores rank-normalised within the evaluated set and averaged, and
  the engine's calibrated combination (mean normal rank); reported with a paired bootstrap of the AUROC
  gain over the better single method, so "helps" means the 95 % interval is above 0.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..heatmaps import HeatmapConfig, HeatmapEngine, NormalBank, create_engine
from ..heatmaps.engine import GLOBAL
from ..heatmaps.inputs import read_quietly
from ..heatmaps.scores import normal_rank
from ..utils.atomic import atomic_write_text
from .anomaly_metrics import aupro, auroc, auroc_ci95, pixel_auroc, spearman
from .lesions import KINDS, random_lesions

__all__ = [
    "HeatmapEvalConfig",
    "evaluate_from_paths",
    "evaluate_heatmaps",
    "list_graded",
    "paired_bootstrap_gain",
]

log = logging.getLogger(__name__)
_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff"}


@dataclass
class HeatmapEvalConfig:
    data: Path  # knee_kl root: <split>/<grade>/*.png
    split: str = "val"
    max_per_grade: int | None = None  # smoke runs: cap the images per grade (seeded choice)
    lesion_images: int | None = None  # first N KL 0 images of the split get lesions (None: all of them)
    lesions_per_image: int = 1
    kinds: tuple[str, ...] = KINDS
    seed: int = 0
    size: int | None = None
    bootstrap: int = 1000


def list_graded(
    data: Path, split: str, max_per_grade: int | None = None, seed: int = 0
) -> list[tuple[Path, int]]:
    """(path, grade) of every image under ``data/split/<grade>/``, optionally a seeded subset per grade."""
    root = Path(data) / split
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such split folder (expected <data>/{split}/<grade>/*.png)")
    rng = np.random.default_rng(seed)
    out: list[tuple[Path, int]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in _SUFFIXES)
        if max_per_grade is not None and len(files) > max_per_grade:
            files = [files[i] for i in sorted(rng.choice(len(files), max_per_grade, replace=False))]
        out.extend((f, int(folder.name)) for f in files)
    if not out:
        raise FileNotFoundError(f"no graded images under {root}")
    return out


def paired_bootstrap_gain(
    combined: np.ndarray, singles: dict[str, np.ndarray], labels: np.ndarray, n: int = 1000, seed: int = 0
) -> dict[str, float]:
    """AUROC(combined) - max_m AUROC(single m), with a 95 % percentile interval over image resamples."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)

    def gain(idx: np.ndarray) -> float:
        y = labels[idx]
        return auroc(combined[idx], y) - max(auroc(s[idx], y) for s in singles.values())

    point = gain(np.arange(labels.size))
    draws = []
    for _ in range(n):
        idx = rng.integers(0, labels.size, labels.size)
        if 0 < labels[idx].sum() < labels.size:
            draws.append(gain(idx))
    lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan"))
    return {"gain": float(point), "ci95_low": float(lo), "ci95_high": float(hi), "helps": bool(lo > 0)}


def _set_rank(values: np.ndarray) -> np.ndarray:
    return (stats.rankdata(values) - 1) / max(len(values) - 1, 1)


def _image_level(
    engine: HeatmapEngine, items: list[tuple[Path, int]], bootstrap: int = 1000
) -> dict[str, Any]:
    calib = engine.bank.card.calibration if engine.bank is not None else {}
    scores: dict[str, list[float]] = {m: [] for m in engine.methods}
    grades: list[int] = []
    t0 = time.monotonic()
    for i, (path, grade) in enumerate(items):
        ps = engine.patch_scores(read_quietly(path))
        for m in engine.methods:
            scores[m].append(engine.image_score(ps.patch[m], ps.valid))
        if ps.global_score is not None:
            scores.setdefault(GLOBAL, []).append(ps.global_score)
        grades.append(grade)
        if (i + 1) % 50 == 0 or i + 1 == len(items):
            rate = (i + 1) / (time.monotonic() - t0)
            log.info(
                "image level %d/%d (%.2f img/s, ETA %.0f s)",
                i + 1,
                len(items),
                rate,
                (len(items) - i - 1) / rate,
            )
    arr = {m: np.asarray(v) for m, v in scores.items()}
    if len(arr.get(GLOBAL, ())) != len(grades):
        arr.pop(GLOBAL, None)
    if len(engine.methods) == 2:
        arr["both_set_rank"] = np.mean([_set_rank(arr[m]) for m in engine.methods], axis=0)
        if all(m in calib for m in engine.methods):
            arr["both_calibrated"] = np.array(
                [
                    np.mean([normal_rank(arr[m][i], calib[m]) for m in engine.methods])
                    for i in range(len(grades))
                ]
            )
    g = np.asarray(grades)
    sel = (g == 0) | (g >= 3)
    y = (g[sel] >= 3).astype(int)
    out: dict[str, Any] = {
        "n_images": len(grades),
        "n_per_grade": {int(k): int((g == k).sum()) for k in np.unique(g)},
        "seconds_per_image": (time.monotonic() - t0) / max(len(items), 1),
        "methods": {},
    }
    both_classes = 0 < y.sum() < y.size
    for name, s in arr.items():
        entry: dict[str, Any] = {"spearman_grade": spearman(s, g)}
        entry["auroc_kl0_vs_kl34"] = auroc(s[sel], y) if both_classes else None
        entry["auroc_ci95"] = list(auroc_ci95(s[sel], y, n=bootstrap)) if both_classes else None
        entry["mean_score_per_grade"] = {int(k): float(s[g == k].mean()) for k in np.unique(g)}
        out["methods"][name] = entry
    # every image's scores: the ROC curve and score-by-grade plots are drawn from these, and a later
    # backbone can be compared image by image
    out["per_image"] = [
        {"image": p.name, "grade": int(k), **{name: float(v[i]) for name, v in arr.items()}}
        for i, ((p, _), k) in enumerate(zip(items, g))
    ]
    if "both_set_rank" in arr and 0 < y.sum() < y.size:
        singles = {m: arr[m][sel] for m in engine.methods}
        out["combination_gain"] = {
            k: paired_bootstrap_gain(arr[k][sel], singles, y, n=bootstrap)
            for k in ("both_set_rank", "both_calibrated")
            if k in arr
        }
    return out


def _pixel_level(
    engine: HeatmapEngine,
    normals: list[Path],
    config: HeatmapEvalConfig,
    examples: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Pixel AUROC / AUPRO on synthetic lesions; ``examples`` (if given) receives the first image of each
    lesion kind with its mask and maps, for the report figures (not cherry-picked)."""
    maps: dict[str, list[np.ndarray]] = {}
    masks: list[np.ndarray] = []
    kinds: list[str] = []
    t0 = time.monotonic()
    for i, path in enumerate(normals):
        record = read_quietly(path)
        kind = config.kinds[i % len(config.kinds)]
        lesion = random_lesions(record.array, n=config.lesions_per_image, kinds=(kind,), seed=config.seed + i)
        result = engine.run(replace(record, array=lesion.image))
        for m, hm in result.maps.items():
            maps.setdefault(m, []).append(hm)
        if engine.method == "both":
            maps.setdefault("both", []).append(result.map)
        masks.append(lesion.mask)
        kinds.append(kind)
        if examples is not None and kind not in examples:
            examples[kind] = {
                "name": path.name,
                "image": lesion.image,
                "mask": lesion.mask,
                "maps": dict(result.maps, **({"both": result.map} if engine.method == "both" else {})),
            }
        if (i + 1) % 50 == 0 or i + 1 == len(normals):
            rate = (i + 1) / (time.monotonic() - t0)
            log.info(
                "pixel level %d/%d (%.2f img/s, ETA %.0f s)",
                i + 1,
                len(normals),
                rate,
                (len(normals) - i - 1) / rate,
            )
    out: dict[str, Any] = {
        "n_images": len(masks),
        "lesion_fraction": float(np.mean([m.mean() for m in masks])),
        "seconds_per_image": (time.monotonic() - t0) / max(len(normals), 1),
        "methods": {},
    }
    for m, hms in maps.items():
        entry: dict[str, Any] = {
            "pixel_auroc": pixel_auroc(hms, masks),
            "aupro": aupro(hms, masks),
            "per_kind": {},
        }
        for kind in sorted(set(kinds)):
            idx = [j for j, k in enumerate(kinds) if k == kind]
            sub_maps, sub_masks = [hms[j] for j in idx], [masks[j] for j in idx]
            entry["per_kind"][kind] = {
                "n": len(idx),
                "pixel_auroc": pixel_auroc(sub_maps, sub_masks),
                "aupro": aupro(sub_maps, sub_masks),
            }
        out["methods"][m] = entry
    return out


def evaluate_heatmaps(
    engine: HeatmapEngine, config: HeatmapEvalConfig, examples: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Image- and pixel-level report for one engine (use method 'both' to get every method at once).

    ``examples`` (optional, filled in place) collects one synthetic-lesion example per kind for figures.
    """
    items = list_graded(config.data, config.split, config.max_per_grade, config.seed)
    normals = [p for p, g in list_graded(config.data, config.split) if g == 0]
    if config.lesion_images is not None:
        normals = normals[: config.lesion_images]
    report: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.__dict__.items()},
        "engine": {
            "method": engine.method,
            "methods": list(engine.methods),
            "size": engine.size,
            "units": "normal"
            if engine.bank is not None and all(m in engine.bank.card.calibration for m in engine.methods)
            else "raw",
            "bank": None if engine.bank is None else engine.bank.card.to_dict() | {"calibration": "..."},
        },
        "image_level": _image_level(engine, items, config.bootstrap),
        "pixel_level": _pixel_level(engine, normals, config, examples),
    }
    summary: dict[str, Any] = {}
    for m, e in report["image_level"]["methods"].items():
        summary[f"image_auroc_kl0_vs_kl34[{m}]"] = e["auroc_kl0_vs_kl34"]
        summary[f"spearman_grade[{m}]"] = e["spearman_grade"]
    for m, e in report["pixel_level"]["methods"].items():
        summary[f"pixel_auroc[{m}]"] = e["pixel_auroc"]
        summary[f"aupro[{m}]"] = e["aupro"]
    report["summary"] = summary
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict[str, Any], keep: str = "patchknn") -> dict[str, Any]:
    """Which method to use by default. The combination only when its paired bootstrap AUROC gain over the
    better single method is above 0 (95 % interval); a single method only when it measurably separates
    KL 0 from KL 3-4 (its AUROC interval above 0.5). Otherwise nothing has earned a change and ``keep``
    (the CLI default: needs no MAE decoder) stays. Pixel-level AUPRO is reported alongside, not voted on:
    synthetic lesions say how well a map localises a drawn defect, not whether the model sees disease."""
    methods = report["image_level"]["methods"]
    image_score = _global_verdict(methods.get(GLOBAL))
    singles = {m: methods[m] for m in ("recon", "patchknn") if m in methods}
    singles = {m: e for m, e in singles.items() if e["auroc_kl0_vs_kl34"] is not None}
    pixel = report.get("pixel_level", {}).get("methods", {})
    best_pixel = max(pixel, key=lambda m: pixel[m]["aupro"]) if pixel else None
    if not singles:
        return {"default_method": keep, "reason": "no image-level AUROC", "best_pixel_aupro": best_pixel,
                **image_score}
    best = max(singles, key=lambda m: singles[m]["auroc_kl0_vs_kl34"])
    ci = singles[best].get("auroc_ci95") or [float("nan"), float("nan")]
    separates = bool(ci[0] > 0.5)
    gains = report["image_level"].get("combination_gain", {})
    helps = sorted(k for k, g in gains.items() if g.get("helps"))
    out: dict[str, Any] = {
        "best_single": best,
        "best_single_separates": separates,
        "combination_helps": bool(helps) if gains else None,
        "best_pixel_aupro": best_pixel,
        **image_score,
    }
    if helps:
        return {
            **out,
            "default_method": "both",
            "reason": f"combination AUROC gain over {best} has a 95 % interval above 0 ({helps})",
        }
    no_combo = "; the combination does not measurably help (gain interval includes 0 or is negative)"
    if separates:
        return {
            **out,
            "default_method": best,
            "reason": f"{best} has the higher KL0-vs-KL3-4 AUROC, interval above 0.5"
            + (no_combo if gains else ""),
        }
    return {
        **out,
        "default_method": keep if keep in singles else best,
        "reason": f"no map method separates KL 0 from KL 3-4 (best, {best}: 95 % interval {ci[0]:.2f}-{ci[1]:.2f} "
        f"includes 0.5), so the default stays {keep if keep in singles else best}"
        + (no_combo if gains else ""),
    }


def _global_verdict(entry: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the image-level global score (not a map) separates KL 0 from KL 3-4: its interval above 0.5."""
    if not entry or entry.get("auroc_kl0_vs_kl34") is None:
        return {}
    ci = entry.get("auroc_ci95") or [float("nan"), float("nan")]
    return {"global_separates": bool(ci[0] > 0.5), "global_auroc_ci95": list(ci)}


def evaluate_from_paths(
    backbone: str | Path,
    bank: str | Path | None,
    config: HeatmapEvalConfig,
    out: str | Path,
    *,
    anatomy: str = "knee",
    command: str | None = None,
    n_examples: int = 3,
    update_doc: str | Path | None = None,
) -> dict[str, Any]:
    """Load backbone (+ bank), evaluate every method it supports, write the report atomically.

    ``out`` ending in ``.json``: the JSON report only. Otherwise a folder: ``heatmap_eval.json``,
    ``README.md`` (tables + the ``command`` that made them) and PNG figures (ROC curve, score by grade,
    overlays of the first ``n_examples`` KL 4 knees of the split and one KL 0 for contrast, one synthetic
    lesion per kind with its ground truth). ``update_doc`` rewrites the results block of that markdown file
    (docs/heatmaps.md), so one command refreshes every number when the default backbone changes.
    """
    from ..heatmaps.report import write_report
    from ..models import load_backbone

    model = load_backbone(backbone)
    normal_bank = NormalBank.load(bank) if bank is not None else None
    if normal_bank is None and Path(backbone).is_dir():
        from ..heatmaps import default_bank_path

        found = default_bank_path(backbone, anatomy)
        normal_bank = NormalBank.load(found) if found is not None else None
    has_recon = bool(getattr(model, "has_mae_decoder", False))
    calibrated = normal_bank is not None and {"recon", "patchknn"} <= set(normal_bank.card.calibration)
    if normal_bank is None:
        method = "recon"
    elif has_recon and calibrated:
        method = "both"
    else:
        method = "patchknn"
    engine = create_engine(model, method, normal_bank, config=HeatmapConfig(size=config.size))
    t0 = time.monotonic()
    examples: dict[str, dict[str, Any]] = {}
    report = evaluate_heatmaps(engine, config, examples)
    report["backbone"] = str(backbone)
    report["command"] = command
    report["seconds_total"] = time.monotonic() - t0
    out = Path(out)
    if out.suffix.lower() == ".json":
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        return report
    graded = list_graded(config.data, config.split)
    picks = [p for p, g in graded if g == 4][:n_examples] + [p for p, g in graded if g == 0][:1]
    real = []
    for path in picks:
        result = engine.run(read_quietly(path))
        grade = next(g for p, g in graded if p == path)
        maps = dict(result.maps, **({"both": result.map} if engine.method == "both" else {}))
        real.append({"name": path.name, "grade": grade, "image": read_quietly(path).array, "maps": maps})
    write_report(report, out, real_examples=real, lesion_examples=examples, update_doc=update_doc)
    return report
