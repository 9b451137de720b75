"""``abnormality``: zero-shot heatmap (patch novelty vs a normal bank, or MAE reconstruction error)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig

from lib.infers.abnormality import Abnormality
from lib.trainers.normal_bank import NormalBankTrainer


class AbnormalityConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.runtime = kwargs["runtime"]
        self.anatomy = conf.get("anatomy", "knee")
        self.label_tag = conf.get("class_label_tag", "cls")

    def infer(self) -> Abnormality:
        return Abnormality(self.runtime, default_method=self.runtime.settings.heatmap_method,
                           default_anatomy=self.anatomy)

    def trainer(self) -> NormalBankTrainer:
        return NormalBankTrainer(self.runtime, anatomy=self.anatomy, label_tag=self.label_tag)
