"""``knee_kl``: Kellgren-Lawrence grade with calibrated per-class probabilities and the expected grade."""

from __future__ import annotations

from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.server.errors import Conflict
from orthofm.heads.precision import redecide_near_ties

from .base import OrthoInferTask, Source

KL_CLASSES = ("KL0", "KL1", "KL2", "KL3", "KL4")


def _grade(name: str, index: int) -> float:
    """'KL3' -> 3 (the expected grade is in KL units even when some grades were never labelled)."""
    digits = "".join(ch for ch in str(name) if ch.isdigit())
    return float(digits) if digits else float(index)


class NotTrained(Conflict):
    code = "not_trained"


def features_for(store: Any, source: Source) -> np.ndarray:
    """(1, F) features exactly as ``store`` (and so the heads trained on it) defines them.

    Datastore images go through the cached store (a repeat costs a file hash); uploads are embedded in memory."""
    if source.image_id is not None:
        return store.embed_paths([str(source.path)])
    return store.embed_arrays([source.record.array])


class KneeKL(OrthoInferTask):
    anatomies = ("knee",)

    def __init__(self, runtime: Any, task: str = "knee_kl", label_tag: str = "cls") -> None:
        super().__init__(
            runtime,
            type=InferType.CLASSIFICATION,
            labels={c: i for i, c in enumerate(KL_CLASSES)},
            dimension=2,
            description="Knee osteoarthritis Kellgren-Lawrence grade: calibrated probabilities + expected grade",
            config={},
        )
        self.task = task
        self.label_tag = label_tag

    def run(self, source: Source, request: dict) -> tuple[str | None, dict]:
        head = self.runtime.head(self.task)
        if head is None:
            raise NotTrained(
                f"no trained {self.task} head yet: save class labels (PUT /datastore/label?tag={self.label_tag} "
                f'with {{"label": "KL2"}}) for a few images per grade, then POST /train/{self.task}'
            )
        trained_on = head.card.backbone.get("id")
        if trained_on and trained_on != self.runtime.embedding_store.backbone_id:
            raise NotTrained(f"the published {self.task} head was trained on other weights ({trained_on}); "
                             f"retrain it for these weights: POST /train/{self.task}")
        store, exact_store = self.runtime.head_stores(self.task, head)
        feats = features_for(store, source)
        probs = head.predict_proba(feats)[0].astype(float)
        precision = str(store.dtype).removeprefix("torch.")
        if precision != "float32":  # near a boundary bf16 could flip the grade: decide it on float32 features
            redecided, rechecked = redecide_near_ties(head, probs[None],
                                                      lambda rows: features_for(exact_store, source))
            if rechecked[0]:
                probs, precision = redecided[0], "float32 (near-tie re-check)"
        classes = list(head.classes)
        index = int(head.decode(probs[None])[0])
        result: dict[str, Any] = {
            "prediction": [{"idx": i, "label": c, "score": round(float(p), 6)} for i, (c, p) in
                           enumerate(zip(classes, probs))],
            "label": classes[index],
            "label_index": index,
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)},
            "label_names": {c: i for i, c in enumerate(classes)},
            "precision": precision,
        }
        if head.card.ordinal:
            grades = np.asarray([_grade(c, i) for i, c in enumerate(classes)], dtype=float)
            result["expected_grade"] = round(float(probs @ grades), 4)
        folder = self.runtime.head_folder(self.task)
        result["head"] = {
            "version": folder.name if folder else None,
            "kind": head.card.kind,
            "calibrated": "temperature" in head.card.calibration,
            "temperature": head.card.temperature,
            "trained_on": head.card.data.get("n_train") or head.card.data.get("n") or head.card.data,
            "metrics": head.card.metrics,
        }
        return None, result
