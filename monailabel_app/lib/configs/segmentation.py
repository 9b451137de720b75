"""``segmentation``: few-shot label maps from the user's annotations (tag ``final``), then a light decoder."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig

from lib.infers.segmentation import Segmentation
from lib.trainers.segmentation import SegmentationTrainer


class SegmentationConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.runtime = kwargs["runtime"]
        self.labels = dict(self.runtime.settings.segment_labels)
        self.label_colors = dict(self.runtime.settings.segment_colors)

    def infer(self) -> Segmentation:
        return Segmentation(self.runtime, self.labels, self.label_colors, lambda: self.runtime.datastore,
                            task=self.name)

    def trainer(self) -> SegmentationTrainer:
        return SegmentationTrainer(self.runtime, (0, *sorted(self.labels.values())), task=self.name)
