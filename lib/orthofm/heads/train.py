"""Training a head end to end: labels -> (fraction) -> cached features -> fitted, calibrated, saved head.

``fit_head`` is the in-memory step used by both ``orthofm train-head`` and the evaluation protocol;
``train_task_head`` is the whole command (load backbone and labels, sample a patient-grouped fraction,
embed, fit each requested head kind, optionally pick the best on a separate validation set, save).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orthofm.evaluate.metrics import classification_metrics
from orthofm.evaluate.splits import sample_fraction
from orthofm.models import Backbone

from .base import FeatureHead
from .calibration import fit_temperature, softmax
from .embeddings import EmbeddingStore
from .knn import KNNHead
from .labels import LabeledSet, load_labels
from .mlp import MLPHead
from .probe import LogisticProbe
from .runtime import default_cache_dir, default_model_dir
from .saved import HeadCard, TrainedHead

__all__ = [
    "FEATURE_HEAD_KINDS", "TrainHeadConfig", "finish_head", "fit_head", "heads_dir", "make_head", "selection_score",
    "train_task_head",
]

log = logging.getLogger(__name__)
FEATURE_HEAD_KINDS: dict[str, type[FeatureHead]] = {"probe": LogisticProbe, "knn": KNNHead, "mlp": MLPHead}


def make_head(kind: str, n_classes: int, *, ordinal: bool = False, **params: Any) -> FeatureHead:
    """A fresh feature head by name: ``probe`` (logistic), ``knn`` (weighted kNN) or ``mlp``."""
    if kind not in FEATURE_HEAD_KINDS:
        raise ValueError(f"unknown head kind {kind!r}; choose from {sorted(FEATURE_HEAD_KINDS)} (or 'finetune')")
    return FEATURE_HEAD_KINDS[kind](n_classes, ordinal=ordinal, **params)


def fit_head(
    x: np.ndarray, y: np.ndarray, groups: list[str], classes: list[str], *, kind: str = "probe",
    task: str = "task", ordinal: bool = False, decode: str = "argmax", seed: int = 0,
    backbone: dict[str, Any] | None = None, data: dict[str, Any] | None = None, label_fraction: float = 1.0,
    params: dict[str, Any] | None = None,
) -> TrainedHead:
    """Fit one head on features, calibrate its temperature on its out-of-sample logits, fill its card."""
    head = make_head(kind, len(classes), ordinal=ordinal, **(params or {}))
    result = head.fit(x, y, groups, seed=seed)
    return finish_head(head, result, classes, task=task, ordinal=ordinal, decode=decode, backbone=backbone,
                       data=data, label_fraction=label_fraction, seed=seed)


def finish_head(head: FeatureHead, result, classes: list[str], *, task: str, ordinal: bool, decode: str,
                backbone: dict[str, Any] | None, data: dict[str, Any] | None, label_fraction: float,
                seed: int) -> TrainedHead:
    """Temperature-scale on the fit's out-of-sample logits and wrap the head with its card."""
    calibration = fit_temperature(result.logits, result.y)
    card = HeadCard(task=task, kind=head.kind, classes=list(classes), ordinal=ordinal, decode=decode,
                    backbone=dict(backbone or {}), label_fraction=float(label_fraction),
                    data={**(data or {}), "seed": seed}, fit=result.info, calibration=calibration.to_dict())
    trained = TrainedHead(head, card)
    if len(result.y) >= 2:
        probs = softmax(result.logits, calibration.temperature)
        card.metrics["train_out_of_sample"] = {
            **classification_metrics(result.y, probs, ordinal=ordinal, y_pred=trained.decode(probs)),
            "note": "out-of-fold / held-out training labels; also used for the temperature, so ECE is optimistic",
        }
    card.params = head.params()
    return trained


def selection_score(metrics: dict[str, float], ordinal: bool) -> float:
    """What picks a model among candidates: QWK for ordinal tasks, macro-F1 otherwise."""
    return float(metrics["qwk"] if ordinal else metrics["macro_f1"])


@dataclass
class TrainHeadConfig:
    """``orthofm train-head`` in one object (the CLI only fills it)."""

    task: str
    labels: str | os.PathLike[str]
    fraction: float = 1.0
    weights: str | os.PathLike[str] | None = None
    out: str | os.PathLike[str] | None = None
    kinds: tuple[str, ...] = ("probe",)
    seed: int = 0
    val_labels: str | os.PathLike[str] | None = None
    ordinal: bool | None = None  # None: ordinal when the class names are consecutive integers
    decode: str = "argmax"
    cache: str | os.PathLike[str] | None = None
    batch_size: int = 32
    head_params: dict[str, dict[str, Any]] = field(default_factory=dict)


def heads_dir(weights: str | os.PathLike[str], task: str) -> Path:
    """Where a task's head lives by default: ``<model folder>/heads/<task>`` (beside a weights file too)."""
    w = Path(weights)
    return (w if w.is_dir() else w.parent) / "heads" / task


def _backbone_info(store: EmbeddingStore, weights: Path) -> dict[str, Any]:
    return {"id": store.backbone_id, "arch": store.backbone.arch, "weights": str(weights),
            "input_size": int(store.backbone.preprocess.input_size)}


def _load(weights: Path) -> Backbone:
    from orthofm.models import load_backbone  # type: ignore[attr-defined]

    return load_backbone(weights)


def train_task_head(cfg: TrainHeadConfig, backbone: Backbone | None = None) -> tuple[TrainedHead, Path]:
    """Train (and save) the head for ``cfg.task``; returns the head and the folder it was saved to.

    Hyper-parameters and calibration come from the training labels only. With ``val_labels`` every kind in
    ``cfg.kinds`` is trained and the one with the best validation score (QWK for ordinal tasks, else
    macro-F1) is kept; its card then records the validation metrics and that they were used for selection.
    """
    weights = Path(cfg.weights) if cfg.weights else default_model_dir()
    if backbone is None:
        backbone = _load(weights)
    labels = load_labels(cfg.labels)
    ordinal = labels.is_ordinal_like if cfg.ordinal is None else bool(cfg.ordinal)
    y_all = labels.y
    idx = sample_fraction(y_all, labels.patients, cfg.fraction, cfg.seed)
    train: LabeledSet = labels.subset(idx)
    log.info("training %s head(s) %s on %d/%d images (%d patients, fraction %.3g)", cfg.task, list(cfg.kinds),
             len(train), len(labels), len(set(train.patients)), cfg.fraction)
    store = EmbeddingStore(cfg.cache or default_cache_dir(), backbone, batch_size=cfg.batch_size)
    x = store.embed_paths(train.paths)
    data = {"labels": str(labels.source), "n_images": len(train), "n_patients": len(set(train.patients)),
            "n_available": len(labels), "class_counts": np.bincount(train.y, minlength=len(labels.classes)).tolist()}
    val = load_labels(cfg.val_labels, classes=labels.classes) if cfg.val_labels else None
    x_val = store.embed_paths(val.paths) if val is not None else None
    candidates: list[tuple[float, TrainedHead]] = []
    for kind in cfg.kinds:
        if kind == "finetune":
            trained = _train_finetune_head(cfg, backbone, store, train, ordinal, data, weights)
            feats_val = None if val is None else _finetuned_store(store, trained).embed_paths(val.paths)
        else:
            trained = fit_head(x, train.y, train.patients, labels.classes, kind=kind, task=cfg.task,
                               ordinal=ordinal, decode=cfg.decode, seed=cfg.seed,
                               backbone=_backbone_info(store, weights), data=data, label_fraction=cfg.fraction,
                               params=cfg.head_params.get(kind))
            feats_val = x_val
        score = 0.0
        if val is not None:
            probs = trained.predict_proba(feats_val)
            metrics = classification_metrics(val.y, probs, ordinal=ordinal, y_pred=trained.decode(probs))
            trained.card.metrics["val"] = {**metrics, "labels": str(val.source)}
            score = selection_score(metrics, ordinal)
            log.info("%s: val %s", kind, {k: round(v, 4) for k, v in metrics.items()})
        elif "train_out_of_sample" in trained.card.metrics:
            score = selection_score(trained.card.metrics["train_out_of_sample"], ordinal)
        candidates.append((score, trained))
    best = max(candidates, key=lambda c: c[0])[1]
    if len(candidates) > 1:
        best.card.data["selected_from"] = {t.card.kind: s for s, t in candidates}
        best.card.data["selected_on"] = "val" if val is not None else "training labels (out-of-sample)"
    out = Path(cfg.out) if cfg.out else heads_dir(weights, cfg.task)
    best.save(out)
    log.info("saved %s head (%s) to %s", cfg.task, best.card.kind, out)
    return best, out


def _finetuned_store(store: EmbeddingStore, trained: TrainedHead) -> EmbeddingStore:
    tuned = trained.feature_backbone(store.backbone)
    return EmbeddingStore(store.root, tuned, dtype=store.dtype, batch_size=store.batch_size, progress=store.progress)


def _train_finetune_head(cfg: TrainHeadConfig, backbone: Backbone, store: EmbeddingStore, train: LabeledSet,
                         ordinal: bool, data: dict[str, Any], weights: Path) -> TrainedHead:
    from .finetune import FinetuneConfig, cached_prefix_tokens, train_finetune

    ft_cfg = FinetuneConfig(**cfg.head_params.get("finetune", {}))
    start = len(backbone.model.blocks) - ft_cfg.n_blocks  # type: ignore[attr-defined]
    tokens, grid = cached_prefix_tokens(backbone, store, train.paths, start, batch_size=cfg.batch_size,
                                        precision=ft_cfg.precision)
    head, result = train_finetune(backbone, tokens, grid, train.y, train.patients, len(train.classes),
                                  ordinal=ordinal, config=ft_cfg, seed=cfg.seed)
    return finish_head(head, result, train.classes, task=cfg.task, ordinal=ordinal, decode=cfg.decode,
                   backbone=_backbone_info(store, weights), data=data, label_fraction=cfg.fraction, seed=cfg.seed)
