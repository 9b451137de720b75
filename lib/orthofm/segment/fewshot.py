"""Few-shot segmentation on frozen patch features: label propagation from a handful of annotated images.

A user annotates one or a few images; every patch of those images becomes a support example (its feature, and
the fraction of each label inside the patch). A new image's patches take the similarity-weighted vote of their
k nearest support patches (cosine similarity, softmax with a temperature), giving per-class probability maps at
patch resolution; these are interpolated to the full original grid (through ``PreparedImage.to_original``)
before the arg-max, so boundaries are drawn at full resolution rather than in 16-pixel blocks.

Label values: 0 is background; the caller passes the label values in use (``values``), column ``i`` of every
probability array belongs to ``values[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orthofm.io.prepare import PreparedImage, resize_2d

__all__ = ["SupportSet", "canvas_labels", "labelmap_from_probs", "patch_targets", "propagate"]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def canvas_labels(label2d: np.ndarray, prep: PreparedImage, values: Sequence[int]) -> np.ndarray:
    """(C, S, S) fraction of each label value per canvas pixel (antialiased resize; padding = background)."""
    lab = np.asarray(label2d)
    if lab.shape != prep.original_shape:
        raise ValueError(f"label shape {lab.shape} does not match the image {prep.original_shape}")
    sh, sw = prep.geometry.canvas_shape
    top, left = prep.geometry.pad
    rh, rw = prep.geometry.resized_shape
    out = np.zeros((len(values), sh, sw), dtype=np.float32)
    out[0] = 1.0
    for c, v in enumerate(values):
        plane = resize_2d((lab == v).astype(np.float32), (rh, rw), order=1)
        out[c, top:top + rh, left:left + rw] = np.clip(plane, 0.0, 1.0)
    total = out.sum(axis=0, keepdims=True)
    return out / np.maximum(total, 1e-6)


def patch_targets(label2d: np.ndarray, prep: PreparedImage, patch_size: int,
                  values: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """((h*w, C) label fractions per patch, (h*w,) bool: patch is at least half image, not padding)."""
    frac = canvas_labels(label2d, prep, values)
    c, sh, sw = frac.shape
    h, w = sh // patch_size, sw // patch_size
    per_patch = frac[:, : h * patch_size, : w * patch_size].reshape(c, h, patch_size, w, patch_size).mean((2, 4))
    mask = prep.mask[: h * patch_size, : w * patch_size].reshape(h, patch_size, w, patch_size).mean((1, 3))
    return per_patch.reshape(c, -1).T.copy(), (mask >= 0.5).reshape(-1)


@dataclass
class SupportSet:
    """Annotated patches: normalised features (M, D) and label fractions (M, C) over ``values``."""

    features: np.ndarray
    labels: np.ndarray
    values: tuple[int, ...]

    @classmethod
    def build(cls, examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], values: Sequence[int],
              max_background: int = 20000, seed: int = 0) -> SupportSet:
        """``examples``: (patch features (h, w, D), targets (h*w, C), valid (h*w,)) per annotated image/slice.

        Background-only patches are subsampled to ``max_background`` so large images do not drown the labels."""
        feats, labs = [], []
        for f, t, valid in examples:
            f = np.asarray(f, dtype=np.float32).reshape(-1, np.shape(f)[-1])
            feats.append(f[valid])
            labs.append(np.asarray(t, dtype=np.float32)[valid])
        if not feats:
            raise ValueError("no annotated examples to build a support set from")
        x, y = np.concatenate(feats), np.concatenate(labs)
        bg = y[:, 0] >= 0.999
        if bg.sum() > max_background:
            rng = np.random.default_rng(seed)
            keep = np.flatnonzero(~bg)
            keep = np.concatenate([keep, rng.choice(np.flatnonzero(bg), max_background, replace=False)])
            x, y = x[keep], y[keep]
        return cls(_normalise(x), y, tuple(int(v) for v in values))

    def __len__(self) -> int:
        return len(self.features)


def propagate(query: np.ndarray, support: SupportSet, k: int = 10, temperature: float = 0.07,
              chunk: int = 4096) -> np.ndarray:
    """Query patch features (h, w, D) -> (C, h, w) label probabilities from the k most similar support patches."""
    q = np.asarray(query, dtype=np.float32)
    h, w, d = q.shape
    qn = _normalise(q.reshape(-1, d))
    k = max(1, min(k, len(support)))
    out = np.empty((len(qn), support.labels.shape[1]), dtype=np.float32)
    for s in range(0, len(qn), chunk):
        sim = qn[s:s + chunk] @ support.features.T
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sim, idx, axis=1)
        wts = np.exp((top - top.max(axis=1, keepdims=True)) / temperature)
        wts /= wts.sum(axis=1, keepdims=True)
        out[s:s + chunk] = np.einsum("nk,nkc->nc", wts, support.labels[idx])
    return out.T.reshape(-1, h, w)


def labelmap_from_probs(probs: np.ndarray, prep: PreparedImage, values: Sequence[int]) -> np.ndarray:
    """(C, h, w) probabilities on the canvas grid -> (H, W) label values on the original grid."""
    full = prep.to_original(np.asarray(probs, dtype=np.float32), order=1)
    lut = np.asarray(values, dtype=np.int32)
    return lut[np.argmax(full, axis=0)]
