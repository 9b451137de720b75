"""How good are a backbone's frozen features? A logistic-regression probe, train split -> val split.

This is the yardstick of a pretraining run (and of the default model's card): the same probe is fitted on
the backbone's features, on a random-init backbone of the same architecture, and on raw 64x64 pixels, so
the pretrained features have to beat both to count. C is chosen by patient-grouped CV on the training
split only; the val split is touched once, for the reported numbers.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from orthofm.heads.calibration import softmax
from orthofm.heads.embeddings import EmbeddingStore
from orthofm.heads.labels import LabeledSet, load_labels
from orthofm.heads.probe import LogisticProbe
from orthofm.io import read_image, robust_scale

from .metrics import classification_metrics

log = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    name: str
    features: str
    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


def pixel_features(paths: list[Path], size: int = 64) -> np.ndarray:
    """Robustly scaled grey images, area-resized to ``size`` x ``size`` and flattened."""
    out = []
    for path in paths:
        with warnings.catch_warnings():  # thumbnails need no physical spacing
            warnings.simplefilter("ignore")
            array = robust_scale(read_image(path).array)
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        out.append(F.interpolate(t, size=(size, size), mode="area").flatten().numpy())
    return np.stack(out)


def _fit_and_score(x_train: np.ndarray, train: LabeledSet, x_val: np.ndarray, val: LabeledSet,
                   ordinal: bool) -> tuple[dict[str, float], dict[str, Any]]:
    head = LogisticProbe(len(train.classes), ordinal=ordinal)
    fit = head.fit(x_train, train.y, list(train.patients), seed=0)
    probs = softmax(head.logits(x_val))
    return classification_metrics(val.y, probs, ordinal=ordinal), dict(fit.info)


def probe_features(name: str, feature_kind: str, x_train: np.ndarray, train: LabeledSet, x_val: np.ndarray,
                   val: LabeledSet) -> ProbeResult:
    ordinal = train.is_ordinal_like
    metrics, info = _fit_and_score(x_train, train, x_val, val, ordinal)
    log.info("%s: acc %.3f qwk %.3f", name, metrics["accuracy"], metrics.get("qwk", float("nan")))
    return ProbeResult(name, feature_kind, metrics, info)


def probe_backbone(backbone: torch.nn.Module, name: str, train: LabeledSet, val: LabeledSet,
                   cache: str | Path) -> ProbeResult:
    store = EmbeddingStore(cache, backbone)
    x_train = store.embed_paths(train.paths)
    x_val = store.embed_paths(val.paths)
    return probe_features(name, "cls+meanpatch", x_train, train, x_val, val)


def compare_to_baselines(weights: str | Path, train_dir: str | Path, val_dir: str | Path, cache: str | Path,
                         baselines: tuple[str, ...] = ("random_init", "pixels64")) -> list[ProbeResult]:
    """The backbone at ``weights`` against a random-init twin and raw pixels, all with the same probe."""
    from orthofm.models import backbone_from_config, load_backbone

    train, val = load_labels(train_dir), load_labels(val_dir, classes=None)
    backbone = load_backbone(weights).eval()
    results = [probe_backbone(backbone, f"backbone:{Path(weights).name}", train, val, cache)]
    if "random_init" in baselines:
        torch.manual_seed(0)
        twin = backbone_from_config(backbone.config).eval()
        results.append(probe_backbone(twin, f"random_init:{backbone.arch}", train, val, cache))
    if "pixels64" in baselines:
        results.append(probe_features("pixels64", "raw 64x64 pixels", pixel_features(train.paths), train,
                                      pixel_features(val.paths), val))
    return results
