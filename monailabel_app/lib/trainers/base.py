"""Base for OrthoFM train tasks: data from the datastore, progress on stdout, atomic publish.

They run in MONAI Label's background train subprocess (``POST /train/<task>``), whose stdout lines become the
``details`` of ``GET /train/``. The result is published as a new version folder (``lib.publish``) that the
server's runtime picks up on its next request, with no restart and no moment without a served model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.train import TrainTask

from lib.publish import current, publish


def say(msg: str) -> None:
    """One progress line for ``GET /train/`` (the subprocess's stdout is captured line by line)."""
    print(f"[orthofm-train] {msg}", flush=True)


class OrthoTrainTask(TrainTask):
    """Subclasses implement ``fit(request, datastore, out_folder) -> metrics dict`` writing into ``out_folder``."""

    def __init__(self, runtime: Any, task: str, description: str, config: dict, root: str = "heads") -> None:
        super().__init__(description)
        self.runtime = runtime
        self.task = task
        self._config = config
        self.root = root

    def config(self) -> dict:
        return dict(self._config)

    def folder(self) -> Path:
        base = self.runtime.heads_root() if self.root == "heads" else self.runtime.banks_root()
        return base / self.task

    def stats(self) -> dict:
        cur = current(self.folder())
        if cur is None:
            return {"published": None}
        info = cur / "train_info.json"
        try:
            return {"published": cur.name, **json.loads(info.read_text())}
        except (OSError, ValueError):
            return {"published": cur.name}

    def fit(self, request: dict, datastore: Any, out: Path) -> dict:
        raise NotImplementedError

    def __call__(self, request: dict, datastore: Any) -> dict:
        t0 = time.perf_counter()
        request = {**self._config, **request}
        say(f"training {self.task} from the datastore")
        holder: dict = {}

        def write(tmp: Path) -> None:
            metrics = self.fit(request, datastore, tmp)
            holder["metrics"] = metrics
            info = {"task": self.task, "seconds": round(time.perf_counter() - t0, 2),
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **metrics}
            (tmp / "train_info.json").write_text(json.dumps(info, indent=2, default=str))

        folder = publish(self.folder(), write)
        say(f"published {self.task} {folder.name} in {time.perf_counter() - t0:.1f} s")
        return {"published": folder.name, **holder.get("metrics", {})}
