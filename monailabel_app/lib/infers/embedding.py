"""``embedding``: the image's feature vector as JSON (research export; the same vector active learning uses)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType

from .base import OrthoInferTask, Source
from .knee_kl import features_for


class Embedding(OrthoInferTask):
    def __init__(self, runtime: Any) -> None:
        super().__init__(
            runtime,
            type=InferType.OTHERS,
            labels=[],
            dimension=2,
            description="Foundation-model feature vector [CLS ; mean patch] (JSON)",
            config={},
        )

    def run(self, source: Source, request: dict) -> tuple[str | None, dict]:
        from orthofm.heads import FEATURE_DEFINITION

        store = self.runtime.embedding_store
        vec = features_for(store, source)[0]
        return None, {
            "embedding": [round(float(v), 6) for v in vec],
            "dim": int(vec.shape[0]),
            "features": FEATURE_DEFINITION,
            "backbone_id": store.backbone_id,
        }
