"""Unlabelled image collections for pretraining, decoded once through ``orthofm.io`` and cached.

Every radiograph becomes one item and every MRI volume one item per slice. Items are stored as
uint8 after robust intensity scaling (long side capped), which keeps ~4k radiographs in ~200 MB
of RAM and lets a re-run skip decoding entirely (an ``.npz`` cache keyed by the file list).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from orthofm.io import read_image, robust_scale

log = logging.getLogger(__name__)

RASTER_EXT = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_EXT = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def _ext(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def discover_sources(roots: list[str | Path]) -> list[Path]:
    """Files and DICOM series folders under ``roots``; a folder of ``.dcm`` slices of one MR/CT
    series is one source (read as a volume), other DICOMs are single images."""
    sources: list[Path] = []
    for root in roots:
        root = Path(root)
        if root.is_file():
            sources.append(root)
            continue
        dicom_dirs: dict[Path, list[Path]] = defaultdict(list)
        for dirpath, _, files in os.walk(root):
            for name in sorted(files):
                path = Path(dirpath) / name
                ext = _ext(path)
                if ext == ".dcm":
                    dicom_dirs[path.parent].append(path)
                elif ext in RASTER_EXT or ext in VOLUME_EXT:
                    sources.append(path)
        for folder, files in dicom_dirs.items():
            sources.extend([folder] if _is_series(files) else files)
    return sorted(set(sources))


def _is_series(files: list[Path]) -> bool:
    if len(files) < 2:
        return False
    import pydicom

    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files[:2]]
    same = heads[0].get("SeriesInstanceUID") == heads[1].get("SeriesInstanceUID")
    return same and str(heads[0].get("Modality", "")) in ("MR", "CT", "PT")


def _to_uint8_slices(array: np.ndarray, max_side: int) -> list[np.ndarray]:
    planes = [array] if array.ndim == 2 else list(array)
    out = []
    for plane in planes:
        scaled = torch.from_numpy(np.ascontiguousarray(robust_scale(plane), dtype=np.float32))
        h, w = scaled.shape
        factor = max_side / max(h, w)
        if factor < 1:
            size = (max(1, round(h * factor)), max(1, round(w * factor)))
            scaled = F.interpolate(scaled[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
        out.append((scaled.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    return out


class DecodedImageCache:
    """All items of ``sources`` as uint8 arrays in memory, with an optional on-disk cache."""

    def __init__(self, sources: list[Path], max_side: int = 320, cache_dir: str | Path | None = None) -> None:
        self.sources = sources
        self.max_side = max_side
        self.items: list[np.ndarray] = []
        self.origins: list[str] = []
        cache_file = self._cache_file(cache_dir)
        if cache_file is not None and cache_file.exists():
            self._load(cache_file)
        else:
            self._decode()
            if cache_file is not None:
                self._save(cache_file)

    def _cache_file(self, cache_dir: str | Path | None) -> Path | None:
        if cache_dir is None:
            return None
        h = hashlib.sha256(str(self.max_side).encode())
        for s in self.sources:
            st = s.stat()
            h.update(f"{s}|{st.st_size}|{st.st_mtime_ns}".encode())
        return Path(cache_dir) / f"decoded_{h.hexdigest()[:16]}.npz"

    def _decode(self) -> None:
        failed = 0
        for i, src in enumerate(self.sources):
            try:
                with warnings.catch_warnings():  # pretraining needs no physical spacing
                    warnings.simplefilter("ignore")
                    record = read_image(src)
            except ValueError as err:  # unreadable files are skipped, loudly
                failed += 1
                log.warning("skipping %s: %s", src, err)
                continue
            for plane in _to_uint8_slices(record.array, self.max_side):
                self.items.append(plane)
                self.origins.append(str(src))
            if (i + 1) % 500 == 0:
                log.info("decoded %d/%d sources", i + 1, len(self.sources))
        log.info("decoded %d items from %d sources (%d skipped)", len(self.items), len(self.sources), failed)

    def _save(self, path: Path) -> None:
        from orthofm.utils.atomic import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"i{k:06d}": a for k, a in enumerate(self.items)}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, origins=np.array(self.origins), **arrays)

    def _load(self, path: Path) -> None:
        with np.load(path) as z:
            self.origins = [str(o) for o in z["origins"]]
            self.items = [z[f"i{k:06d}"] for k in range(len(self.origins))]
        log.info("loaded %d decoded items from %s", len(self.items), path)

    def __len__(self) -> int:
        return len(self.items)

    def tensor(self, index: int) -> torch.Tensor:
        """Item ``index`` as a (1, H, W) float tensor in [0, 1]."""
        return torch.from_numpy(self.items[index]).float().div_(255.0)[None]
