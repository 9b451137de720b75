"""``abnormality``: a float heatmap on the input's own grid (compressed NRRD) + JSON score and regions.

The map comes from ``orthofm.heatmaps.HeatmapEngine`` on the shared backbone: patch novelty against a normal
bank (this project's published bank, else the one shipped with the weights) or MAE reconstruction error. A 2D
result is written as a single-slice volume ((W, H, 1) in NRRD order) carrying the input's spacing, origin and
direction, so Slicer overlays it on the image it came from.
"""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType

from .base import OrthoInferTask, Source, anatomy_of
from .knee_kl import NotTrained

METHODS = ["auto", "patchknn", "recon", "both"]
ANATOMIES = ["auto", "knee", "hip", "shoulder", "ankle"]


class Abnormality(OrthoInferTask):
    def __init__(self, runtime: Any, default_method: str = "auto", default_anatomy: str = "knee") -> None:
        super().__init__(
            runtime,
            type=InferType.SEGMENTATION,  # a volume result: MONAI Label clients expect segmentation-like files
            labels={"abnormality": 1},
            dimension=2,
            description="Zero-shot abnormality heatmap (float NRRD on the input grid) with score and regions",
            config={"method": [default_method] + [m for m in METHODS if m != default_method],
                    "anatomy": ANATOMIES, "result_compress": True},
        )
        self.default_anatomy = default_anatomy

    def run(self, source: Source, request: dict) -> tuple[str | None, dict]:
        from orthofm.heatmaps import BankError
        from orthofm.io.writers import write_like

        method = str(request.get("method", "auto"))
        anatomy = str(request.get("anatomy", "auto"))
        if anatomy == "auto":
            anatomy = anatomy_of(source.body_part) or self.default_anatomy
        try:
            engine = self.runtime.heatmap_engine(method, anatomy)
        except (BankError, ValueError) as exc:
            raise NotTrained(
                f"abnormality ({method}, {anatomy}) is not available: {exc}. Label a few normal {anatomy} images "
                f'(PUT /datastore/label?tag=cls with {{"label": "normal"}} or KL0) and POST /train/abnormality'
            ) from None
        record = source.record
        result = engine.run(record)
        out = self.out_path(request, "heatmap.nrrd")
        # Float maps barely compress (24x512x512: 25.2 MB raw vs 22.3 MB gzip-1) while gzip costs ~10 s per MRI
        # volume (docs/io.md), so the heatmap is always written raw; ``result_compress`` applies to label maps.
        write_like(result.map.astype("float32"), record, out, compression_level=None)
        body = result.to_json()
        body["anatomy"] = anatomy
        body["label_names"] = {"abnormality": 1}
        body["result_kind"] = "heatmap"  # for clients: a float map, not a label map
        return out, body
