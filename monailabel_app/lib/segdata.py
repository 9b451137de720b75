"""Label maps from the datastore as segmentation examples (plumbing only; the maths is ``orthofm.segment``).

An annotated image (a label map under tag ``final``) becomes one example per 2D image, or per labelled slice of
a volume (plus a few unlabelled slices as background). Patch features come from the shared backbone through
the batcher and are cached per (image, label file version), so a new request only embeds the query image.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger("orthofm.segdata")

MAX_SLICES_PER_VOLUME = 12


@dataclass
class Example:
    """One annotated 2D plane: patch features, per-patch targets, validity, and canvas-level labels."""

    features: np.ndarray  # (h, w, D)
    targets: np.ndarray  # (h*w, C) label fractions
    valid: np.ndarray  # (h*w,) bool
    canvas_index: np.ndarray  # (S, S) int class index (for the decoder)
    canvas_valid: np.ndarray  # (S, S) bool


def as_planes(record_array: np.ndarray, label_array: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, Any]]:
    """Pairs of (image plane, label plane, shared value range) with singleton axes removed."""
    img = np.asarray(record_array)
    lab = np.rint(np.asarray(label_array)).astype(np.int32)
    if lab.ndim == 3 and img.ndim == 2 and 1 in lab.shape:
        lab = lab.reshape(img.shape) if lab.size == img.size else lab
    if img.ndim == 2:
        if lab.shape != img.shape:
            raise ValueError(f"label {lab.shape} does not match image {img.shape}")
        return [(img, lab, None)]
    if lab.shape != img.shape:
        raise ValueError(f"label {lab.shape} does not match volume {img.shape}")
    from orthofm.io import robust_range

    vr = robust_range(img)
    fg = [z for z in range(img.shape[0]) if (lab[z] > 0).any()]
    bg = [z for z in range(img.shape[0]) if z not in fg]
    step = max(1, len(fg) // MAX_SLICES_PER_VOLUME)
    chosen = fg[::step][:MAX_SLICES_PER_VOLUME] + bg[:: max(1, len(bg) // 2 or 1)][:2]
    return [(img[z], lab[z], vr) for z in sorted(chosen)]


class SegmentationData:
    """Examples from the datastore's label maps for the ``segmentation`` task."""

    def __init__(self, runtime: Any, values: tuple[int, ...], label_tag: str = "final") -> None:
        if values[0] != 0:
            raise ValueError("label values must start with background 0")
        self.runtime = runtime
        self.values = values
        self.label_tag = label_tag
        self._cache: dict[tuple, list[Example]] = {}
        self._lock = threading.Lock()

    def prepare(self, plane: np.ndarray, value_range: Any = None) -> Any:
        from orthofm.io import prepare_2d

        pre = self.runtime.backbone.preprocess
        return prepare_2d(plane, size=pre.input_size, mean=pre.mean, std=pre.std, value_range=value_range)

    def patch_features(self, preps: list[Any]) -> np.ndarray:
        """(N, h, w, D) patch tokens for prepared planes, in batcher-sized chunks."""
        out = []
        for s in range(0, len(preps), 8):
            x = torch.stack([p.tensor for p in preps[s:s + 8]])
            out.append(self.runtime.features(x)["patches"].float().cpu().numpy())
        return np.concatenate(out)

    def annotated(self, datastore: Any) -> list[tuple[str, str, str]]:
        """(image id, image path, label path) for images with a label map under the tag."""
        out = []
        for image_id in datastore.list_images():
            if not datastore.get_label_by_image_id(image_id, self.label_tag):
                continue
            label = datastore.get_label_uri(image_id, self.label_tag)
            if label and not label.endswith(".json") and os.path.isfile(label):
                out.append((image_id, datastore.get_image_uri(image_id), label))
        return out

    def examples_for(self, image_path: str, label_path: str) -> list[Example]:
        from orthofm.segment import canvas_labels, patch_targets

        key = (image_path, label_path, os.stat(label_path).st_mtime_ns)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        record = self.runtime.read(image_path)
        label = self.runtime.read(label_path)
        planes = as_planes(record.array, label.array)
        preps = [self.prepare(img, vr) for img, _, vr in planes]
        feats = self.patch_features(preps)
        patch = int(self.runtime.backbone.patch_size)
        examples = []
        for (_, lab, _), prep, f in zip(planes, preps, feats):
            lab = np.where(np.isin(lab, self.values), lab, 0)
            targets, valid = patch_targets(lab, prep, patch, self.values)
            frac = canvas_labels(lab, prep, self.values)
            examples.append(Example(f, targets, valid, frac.argmax(0).astype(np.int64), prep.mask))
        with self._lock:
            self._cache[key] = examples
            if len(self._cache) > 256:
                self._cache.pop(next(iter(self._cache)))
        return examples

    def all_examples(self, datastore: Any, max_images: int | None = None) -> tuple[list[Example], int]:
        pairs = self.annotated(datastore)
        if max_images is not None:
            pairs = pairs[-max_images:]
        out: list[Example] = []
        used = 0
        for image_id, image_path, label_path in pairs:
            try:
                out.extend(self.examples_for(image_path, label_path))
                used += 1
            except Exception as exc:  # noqa: BLE001 - one bad label map must not disable the task
                log.warning("skipping label map of %s (%s: %s)", image_id, type(exc).__name__, exc)
        return out, used
