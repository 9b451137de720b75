"""``embedding``: the feature vector as JSON (no training)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig

from lib.infers.embedding import Embedding


class EmbeddingConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.runtime = kwargs["runtime"]

    def infer(self) -> Embedding:
        return Embedding(self.runtime)

    def trainer(self) -> None:
        return None
