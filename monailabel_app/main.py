"""OrthoFM's MONAI Label app: one foundation-model backbone serving every task.

Thin wiring only (the work is done by ``orthofm``): settings from ``--conf``, one shared
:class:`lib.runtime.ModelRuntime` (a single backbone object per process), one ``TaskConfig`` per task in
``lib/configs/``, the crash-consistent datastore and the active-learning strategies over cached embeddings.
"""

from __future__ import annotations

import logging
from typing import Any

import lib.configs
from lib.embeddings import BackgroundEmbedder
from lib.runtime import AppSettings, ModelRuntime
from lib.server.config import ServerSettings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.class_utils import get_class_names

log = logging.getLogger("orthofm.app")


def discover_configs() -> dict[str, type]:
    """Every ``TaskConfig`` in ``lib/configs/``, named after its module (``knee_kl``, ``segmentation``...)."""
    found = {}
    for path in get_class_names(lib.configs, "TaskConfig"):
        module, cls = path.rsplit(".", 1)
        mod = __import__(module, fromlist=[cls])
        found[module.split(".")[-1].lower()] = getattr(mod, cls)
    return dict(sorted(found.items()))


class OrthoFMApp(MONAILabelApp):
    """Grades, heatmaps, few-shot label maps and embeddings from one backbone; labels make it better."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.server_settings = ServerSettings.from_conf(conf)
        self.app_settings = AppSettings.from_conf(conf, app_dir)
        self.runtime = ModelRuntime(self.app_settings, self.server_settings)
        if self.app_settings.embed_on_ingest:
            self.runtime.embedder = BackgroundEmbedder(self.runtime)
            self.runtime.add_ready_hook(self.runtime.embedder)
        available = discover_configs()
        self.task_configs: dict[str, TaskConfig] = {}
        for name in self.app_settings.select_models(available):
            cfg = available[name]()
            cfg.init(name, self.app_settings.model_dir, conf, None, runtime=self.runtime)
            self.task_configs[name] = cfg
        labels = self.app_settings.segment_labels
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="OrthoFM",
            description="Musculoskeletal imaging foundation model: KL grade, abnormality heatmap, few-shot "
            "segmentation and embeddings from one backbone",
            version=self.runtime.version,
            labels=labels,  # explicit: class names must not become segments in Slicer
        )

    # -- MONAI Label hooks -----------------------------------------------------------------------
    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            self.studies = self.studies.rstrip("/").strip()
            return self.init_remote_datastore()  # -> _init_dicomweb_datastore below
        from lib.server.datastore import init_datastore

        ds = init_datastore(self.studies, self.server_settings)
        self.runtime.attach_datastore(ds)
        return ds

    def _init_dicomweb_datastore(self) -> Datastore:
        from lib.server.datastore import init_dicomweb_datastore

        ds = init_dicomweb_datastore(self.studies)
        self.runtime.attach_datastore(ds)
        return ds

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, cfg in self.task_configs.items():
            task = cfg.infer()
            if isinstance(task, dict):
                infers.update(task)
            elif task is not None:
                infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        for name, cfg in self.task_configs.items():
            t = cfg.trainer()
            if t is not None:
                trainers[name] = t
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        from lib.activelearning import build_strategies

        return build_strategies(self.runtime)

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        from lib.scoring import build_scoring_methods

        return build_scoring_methods(self.runtime)

    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta["orthofm"] = self.runtime.describe()
        return meta

    def on_init_complete(self) -> None:
        """No session cleanup timers (sessions are off); start the background embedder instead."""
        log.info("OrthoFM app ready: tasks %s", sorted(self._infers))
        self.runtime.on_ready(self)

    def on_new_image(self, image_id: str) -> None:
        """A client uploaded an image: the background embedder picks it up (no subprocess per upload)."""
        self.runtime.notify_new_image(image_id)

    def shutdown(self) -> None:
        self.runtime.close()
        close = getattr(self._datastore, "close", None)
        if close is not None:
            close()
