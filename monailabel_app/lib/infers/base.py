"""Base for OrthoFM infer tasks: no network of its own (the runtime's shared backbone), bad input -> 4xx.

MONAI Label's ``BasicInferTask`` loads (and deep-copies) a network per task; these tasks hold none. They read the
image once through ``orthofm.io`` (or reuse the record the upload check already decoded), stamp every result with
what produced it (weights, random init, anatomy caveats) and report latencies like MONAI Label does.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.server.errors import UnsupportedMedia
from lib.server.inputs import public_message

# DICOM BodyPartExamined values -> OrthoFM anatomy names
BODY_PARTS = {
    "KNEE": "knee", "HIP": "hip", "PELVIS": "hip", "SHOULDER": "shoulder",
    "ANKLE": "ankle", "FOOT": "ankle", "WRIST": "wrist", "HAND": "wrist", "ELBOW": "elbow",
}


class Source:
    """The request's image: its path, and its decoded record on first use (or the one the upload check made)."""

    def __init__(self, runtime: Any, request: dict) -> None:
        self.runtime = runtime
        self.path = Path(request["image"])
        self.image_id = request.get("image_id")
        self._record = request.get("image_record")

    @cached_property
    def record(self) -> Any:
        if self._record is not None:
            return self._record
        from orthofm.io import ImageReadError

        try:
            return self.runtime.read(self.path)
        except ImageReadError as exc:
            raise UnsupportedMedia(public_message(str(exc), self.path)) from None


    @cached_property
    def body_part(self) -> str | None:
        """BodyPartExamined from the decoded record, or from a DICOM header alone (no pixel decoding)."""
        if "record" in self.__dict__ or self._record is not None:
            return getattr(self.record, "body_part", None)
        first = self.path
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.is_file() and not p.name.startswith("."))
            first = files[0] if files else self.path
        try:
            import pydicom

            ds = pydicom.dcmread(str(first), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM (PNG, NIfTI): anatomy unknown
            return None
        return str(ds.get("BodyPartExamined", "") or "") or None


def anatomy_of(body_part: str | None) -> str | None:
    return BODY_PARTS.get((body_part or "").strip().upper())


class OrthoInferTask(InferTask):
    """Subclasses implement ``run(source, request) -> (result file or None, result dict)``."""

    anatomies: tuple[str, ...] = ()

    def __init__(self, runtime: Any, type: InferType, labels: Any, dimension: int, description: str,
                 config: dict | None = None) -> None:
        super().__init__(type=type, labels=labels, dimension=dimension, description=description,
                         config=config or {})
        self.runtime = runtime

    def is_valid(self) -> bool:
        return True

    def info(self) -> dict:
        d = super().info()
        d["anatomies"] = list(self.anatomies) or "any"
        return d

    def run(self, source: Source, request: dict) -> tuple[str | None, dict]:
        raise NotImplementedError

    def __call__(self, request: dict) -> tuple[str | None, dict]:
        t0 = time.perf_counter()
        source = Source(self.runtime, request)
        from orthofm.io import ImageReadError

        try:
            result_file, result = self.run(source, request)
        except ImageReadError as exc:  # raised deep inside a reader (e.g. through the embedding store)
            raise UnsupportedMedia(public_message(str(exc), source.path)) from None
        total = time.perf_counter() - t0
        result = dict(result)
        result.setdefault("latencies", {})["total"] = round(total, 4)
        meta = self.runtime.result_meta()
        anatomy = anatomy_of(source.body_part)
        meta["anatomy"] = anatomy
        if self.anatomies and anatomy is not None and anatomy not in self.anatomies:
            meta["outside_trained_anatomy"] = True
            meta["caveat"] = (f"this task was trained on {', '.join(self.anatomies)} images; the input looks "
                              f"like {anatomy}: treat the result with caution")
        elif self.anatomies and anatomy is None:
            meta["anatomy_checked"] = False
        result["orthofm"] = meta
        return result_file, result

    @staticmethod
    def out_path(request: dict, name: str) -> str:
        """Result files go to the request's private folder (removed after the response is built)."""
        return str(Path(request["result_dir"]) / name)
