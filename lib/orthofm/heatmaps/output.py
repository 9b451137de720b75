"""Write a heatmap the way a viewer needs it: float NRRD/NIfTI on the input's grid, JSON, optional PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from orthofm.utils.jsonable import json_default

from ..io import ImageRecord, robust_scale
from ..io.writers import write_like
from ..utils.atomic import atomic_path, atomic_write_text
from .engine import HeatmapResult

__all__ = ["FORMATS", "overlay_png", "save_result"]

FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz"}


def overlay_png(
    image: np.ndarray,
    heatmap: np.ndarray,
    path: str | Path,
    *,
    cmap: str = "inferno",
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
) -> Path:
    """Grey image with the heatmap blended on top (values below ``vmin`` transparent), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = np.asarray(image, dtype=np.float32)
    hm = np.asarray(heatmap, dtype=np.float32)
    if img.shape != hm.shape or img.ndim != 2:
        raise ValueError(
            f"overlay needs a 2D image and a heatmap of the same shape, got {img.shape} and {hm.shape}"
        )
    lo = float(np.percentile(hm, 50)) if vmin is None else vmin
    hi = float(hm.max()) if vmax is None else vmax
    hi = hi if hi > lo else lo + 1e-6
    h, w = img.shape
    scale = 6.0 / max(h, w)
    fig = Figure(figsize=(max(w * scale, 2.0), max(h * scale, 2.0)), dpi=max(100, int(max(h, w) / 6.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(robust_scale(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    alpha_map = alpha * np.clip((hm - lo) / (hi - lo), 0, 1)
    ax.imshow(hm, cmap=cmap, vmin=lo, vmax=hi, alpha=alpha_map, interpolation="bilinear")
    if title:
        ax.text(
            4,
            4,
            title,
            color="white",
            fontsize=8,
            va="top",
            ha="left",
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 2, "edgecolor": "none"},
        )
    ax.set_axis_off()
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


def save_result(
    result: HeatmapResult,
    record: ImageRecord,
    out_dir: str | Path,
    stem: str,
    *,
    fmt: str = "nrrd",
    png: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>_heatmap.nrrd`` (float32, input geometry), ``<stem>_heatmap.json`` [and ``.png``]."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {sorted(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {
        "map": out / f"{stem}_heatmap{FORMATS[fmt]}",
        "json": out / f"{stem}_heatmap.json",
    }
    with atomic_path(paths["map"]) as tmp:
        write_like(result.map.astype(np.float32), record, tmp)
    if png:
        paths["png"] = out / f"{stem}_heatmap.png"
        image, heat, where = _display_plane(record, result)
        # colours run from the map's median to max(map max, threshold): a calibrated normal image stays pale
        top = max(float(heat.max()), result.threshold) if result.threshold_kind != "relative" else None
        overlay_png(image, heat, paths["png"], vmax=top, title=f"{result.method} score {result.score:.3g}{where}")
    doc = {
        "source": record.source if isinstance(record.source, str) else (record.source or [None])[0],
        "image_shape": list(record.shape),
        "files": {k: p.name for k, p in paths.items() if k != "json"},
        **result.to_json(),
        **(extra or {}),
    }
    atomic_write_text(paths["json"], json.dumps(doc, indent=2, default=json_default) + "\n")
    return paths


def _display_plane(record: ImageRecord, result: HeatmapResult) -> tuple[np.ndarray, np.ndarray, str]:
    """The 2D image, or for a volume the slice holding the strongest region (else the map maximum)."""
    arr = np.asarray(record.array)
    if arr.ndim == 2:
        return arr, result.map, ""
    k = (
        result.regions[0].peak_index[0]
        if result.regions
        else int(np.unravel_index(result.map.argmax(), result.map.shape)[0])
    )
    return arr[k], result.map[k], f", slice {k}"
