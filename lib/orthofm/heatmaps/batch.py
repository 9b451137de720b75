"""Folder-level runs behind ``orthofm heatmap``: find images, run the engine, write results and a summary."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..io import ImageReadError
from ..io.dicom import is_dicom_file, read_header
from ..utils.atomic import atomic_write_text
from .engine import HeatmapEngine
from .inputs import read_quietly
from .output import save_result

__all__ = ["FolderRun", "find_inputs", "run_folder"]

log = logging.getLogger(__name__)

Input = Path | list[Path]


def find_inputs(root: str | Path) -> list[Input]:
    """Images under ``root``: each file one image, each sub-folder one DICOM series, and top-level DICOM
    files that share a SeriesInstanceUID with positioned slices read together as one volume."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if root.is_file():
        return [root]
    series: dict[str, list[Path]] = defaultdict(list)
    inputs: list[Input] = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            inputs.append(path)
        elif is_dicom_file(path):
            try:
                ds = read_header(path)
            except Exception:  # noqa: BLE001 - unreadable header: let read_image report it later
                inputs.append(path)
                continue
            uid = str(getattr(ds, "SeriesInstanceUID", "")) if "ImagePositionPatient" in ds else ""
            if uid and int(getattr(ds, "NumberOfFrames", 1) or 1) == 1:
                series[uid].append(path)
            else:
                inputs.append(path)
        else:
            inputs.append(path)
    for files in series.values():
        inputs.extend([files] if len(files) > 1 else files)
    return inputs


def _stem(item: Input) -> str:
    path = item[0].parent if isinstance(item, list) else item
    name = path.name
    for ext in (".nii.gz", ".seg.nrrd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0] if "." in name and not path.is_dir() else name


@dataclass
class FolderRun:
    rows: list[dict] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def run_folder(
    engine: HeatmapEngine, images: str | Path, out_dir: str | Path, *, fmt: str = "nrrd", png: bool = False
) -> FolderRun:
    """Heatmaps for every image under ``images``; one bad image is reported and skipped, not fatal."""
    items = find_inputs(images)
    if not items:
        raise FileNotFoundError(f"no images found in {images}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = FolderRun()
    t0 = time.monotonic()
    used: set[str] = set()
    for i, item in enumerate(items):
        stem = _stem(item)
        while stem in used:  # same stem twice (a.png + a.dcm): keep both
            stem += "_"
        used.add(stem)
        try:
            record = read_quietly(item)
            result = engine.run(record)
            paths = save_result(result, record, out, stem, fmt=fmt, png=png)
        except (ImageReadError, ValueError, OSError) as exc:
            run.failures[str(item)] = str(exc)
            log.warning("skipped %s: %s", item, exc)
            continue
        top = result.regions[0] if result.regions else None
        run.rows.append(
            {
                "image": stem,
                "score": result.score,
                "method": result.method,
                "n_regions": len(result.regions),
                "top_region_peak": top.peak if top else "",
                "map": paths["map"].name,
            }
        )
        rate = (i + 1) / (time.monotonic() - t0)
        log.info(
            "%d/%d %s score %.4g (%.2f img/s, ETA %.0f s)",
            i + 1,
            len(items),
            stem,
            result.score,
            rate,
            (len(items) - i - 1) / rate,
        )
    if run.rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(run.rows[0]))
        writer.writeheader()
        writer.writerows(run.rows)
        atomic_write_text(out / "heatmap_scores.csv", buf.getvalue())
    return run
