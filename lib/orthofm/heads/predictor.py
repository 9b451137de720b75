"""Backbone + trained head -> label, per-class probabilities and expected grade for images.

This is the object ``orthofm predict`` and the MONAI Label app call. It refuses a head trained on other
weights (the card records the backbone id), because features of another backbone would give confident
nonsense rather than an error.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orthofm.models import Backbone
from orthofm.utils.atomic import atomic_write_text

from .embeddings import EmbeddingStore, ImageItem, backbone_id
from .precision import redecide_near_ties
from .runtime import default_cache_dir, default_model_dir
from .saved import TrainedHead, load_head

__all__ = ["GradePredictor", "Predictions", "predict_images"]


@dataclass
class Predictions:
    """Per image: decoded label, class index, calibrated probabilities (N, K), expected grade (ordinal only).

    ``rechecked`` marks the near ties whose features were recomputed in float32 (see ``orthofm.heads.precision``).
    """

    classes: list[str]
    index: np.ndarray
    probabilities: np.ndarray
    expected_grade: np.ndarray | None
    rechecked: np.ndarray | None = None

    @property
    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.index]

    def rows(self, paths: Sequence[ImageItem]) -> list[dict[str, str]]:
        """One dict per image: ``path``, ``label``, ``p_<class>`` ... and ``expected_grade`` when ordinal."""
        if len(paths) != len(self.index):
            raise ValueError(f"{len(paths)} paths for {len(self.index)} predictions")
        rows = []
        for i, p in enumerate(paths):
            row = {"path": str(p) if isinstance(p, (str, os.PathLike)) else ";".join(map(str, p)),
                   "label": self.classes[self.index[i]]}
            row.update({f"p_{c}": f"{self.probabilities[i, k]:.6f}" for k, c in enumerate(self.classes)})
            if self.expected_grade is not None:
                row["expected_grade"] = f"{self.expected_grade[i]:.4f}"
            rows.append(row)
        return rows

    def write_csv(self, path: str | os.PathLike[str], paths: Sequence[ImageItem]) -> Path:
        """Write the predictions as CSV (atomically)."""
        rows = self.rows(paths)
        buf = io.StringIO()
        fields = ["path", "label"] + [f"p_{c}" for c in self.classes]
        if self.expected_grade is not None:
            fields.append("expected_grade")
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(target, buf.getvalue())


class GradePredictor:
    """Images -> ``Predictions`` through one backbone and one trained head (features cached in a store)."""

    def __init__(self, backbone: Backbone, head: TrainedHead, *, cache: str | os.PathLike[str] | None = None,
                 dtype: torch.dtype | None = None, batch_size: int = 32, progress: bool = True,
                 recheck_near_ties: bool = True) -> None:
        expected, actual = head.card.backbone.get("id"), backbone_id(backbone)
        if expected and expected != actual:
            raise ValueError(f"the {head.card.task!r} head was trained on backbone {expected} but the loaded weights "
                             f"are {actual}; retrain the head with `orthofm train-head` for these weights")
        backbone = head.feature_backbone(backbone)  # tuned blocks: features cached under their own id
        self.head = head
        self.store = EmbeddingStore(cache or default_cache_dir(), backbone, dtype=dtype, batch_size=batch_size,
                                    progress=progress)
        # a float32 twin for the few near ties of the fast (bf16) path; None when the fast path is float32
        self.exact_store = None
        if recheck_near_ties and self.store.dtype != torch.float32:
            self.exact_store = EmbeddingStore(self.store.root, backbone, dtype=torch.float32,
                                              batch_size=batch_size, progress=False)

    @classmethod
    def from_task(cls, task: str, *, weights: str | os.PathLike[str] | None = None,
                  head_dir: str | os.PathLike[str] | None = None, **kwargs) -> GradePredictor:
        """Load the backbone (default model folder) and its head ``<model>/heads/<task>/`` (or ``head_dir``)."""
        from orthofm.models import load_backbone  # type: ignore[attr-defined]

        from .train import heads_dir

        model_dir = Path(weights) if weights else default_model_dir()
        folder = Path(head_dir) if head_dir else heads_dir(model_dir, task)
        if not folder.exists():
            raise FileNotFoundError(f"no head for task {task!r} at {str(folder)!r}; train one with "
                                    f"`orthofm train-head --task {task} --labels ...`")
        head = load_head(folder)
        if head.card.task != task:
            raise ValueError(f"head at {str(folder)!r} is for task {head.card.task!r}, not {task!r}")
        return cls(load_backbone(model_dir), head, **kwargs)

    def _predict_features(self, feats: np.ndarray,
                          exact: Callable[[np.ndarray], np.ndarray] | None = None) -> Predictions:
        """``exact(rows)``: float32 features of those rows, used for near ties when the features are bf16."""
        probs = self.head.predict_proba(feats)
        rechecked = np.zeros(len(probs), dtype=bool)
        if exact is not None and self.exact_store is not None:
            probs, rechecked = redecide_near_ties(self.head, probs, exact)
        grade = probs @ np.arange(probs.shape[1], dtype=np.float64) if self.head.card.ordinal else None
        return Predictions(classes=self.head.classes, index=self.head.decode(probs), probabilities=probs,
                           expected_grade=grade, rechecked=rechecked)

    def predict_paths(self, paths: Sequence[ImageItem]) -> Predictions:
        """Predict image files / series (features cached by content hash)."""
        paths = list(paths)
        return self._predict_features(
            self.store.embed_paths(paths),
            exact=lambda rows: self.exact_store.embed_paths([paths[i] for i in rows]),
        )

    def predict_arrays(self, arrays: Sequence[np.ndarray]) -> Predictions:
        """Predict in-memory 2D images or (D, H, W) volumes (e.g. ``ImageRecord.array``)."""
        arrays = list(arrays)
        return self._predict_features(
            self.store.embed_arrays(arrays),
            exact=lambda rows: self.exact_store.embed_arrays([arrays[i] for i in rows]),
        )


def predict_images(
    task: str, images: str | os.PathLike[str], out: str | os.PathLike[str], *,
    weights: str | os.PathLike[str] | None = None, head_dir: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None, series: bool = False, batch_size: int = 32,
) -> tuple[Path, Predictions]:
    """``orthofm predict``: every image (or series) below ``images`` -> ``out`` CSV; returns (csv path, predictions)."""
    from .embeddings import list_items

    items = list_items(images, series=series)
    predictor = GradePredictor.from_task(task, weights=weights, head_dir=head_dir, cache=cache, batch_size=batch_size)
    preds = predictor.predict_paths(items)
    return preds.write_csv(out, items), preds
