"""``knee_kl``: KL grade head on the shared backbone; trained from JSON class labels (tag ``cls``)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig

from lib.infers.knee_kl import KneeKL
from lib.trainers.classification import ClassificationTrainer


class KneeKLConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.runtime = kwargs["runtime"]
        self.label_tag = conf.get("class_label_tag", "cls")

    def infer(self) -> KneeKL:
        return KneeKL(self.runtime, task=self.name, label_tag=self.label_tag)

    def trainer(self) -> ClassificationTrainer:
        return ClassificationTrainer(self.runtime, task=self.name, label_tag=self.label_tag)
