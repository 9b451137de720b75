"""``segmentation``: a label map from the user's own annotations, returned as NRRD or Slicer ``.seg.nrrd``.

Few-shot from the first annotated image (patch-feature nearest-neighbour label propagation over all label maps
under tag ``final``), then, once ``POST /train/segmentation`` has published a decoder, the light decoder on frozen
patch features. Label names and colours come from the app configuration (``--conf segment_labels``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.segdata import SegmentationData

from .base import OrthoInferTask, Source
from .knee_kl import NotTrained

EXTENSIONS = [".seg.nrrd", ".nrrd", ".nii.gz"]


class Segmentation(OrthoInferTask):
    def __init__(self, runtime: Any, labels: dict[str, int], colors: dict[str, tuple], datastore_ref: Any,
                 task: str = "segmentation") -> None:
        super().__init__(
            runtime,
            type=InferType.SEGMENTATION,
            labels=dict(labels),
            dimension=3,
            description="Few-shot segmentation from your own label maps (kNN propagation, then a light decoder)",
            config={"method": ["auto", "knn", "decoder"], "k": 10, "result_extension": EXTENSIONS},
        )
        self.task = task
        self.colors = colors
        self.datastore_ref = datastore_ref
        self.values = (0, *sorted(labels.values()))
        self.data = SegmentationData(runtime, self.values)

    def _decoder(self) -> Any:
        folder = self.runtime.head_folder(self.task)
        if folder is None or not (folder / "decoder.json").is_file():
            return None
        return self.runtime.cached(("decoder", str(folder)), lambda: _load_decoder(folder))

    def run(self, source: Source, request: dict) -> tuple[str | None, dict]:
        from orthofm.segment import SupportSet, labelmap_from_probs, propagate

        method = str(request.get("method", "auto"))
        decoder = self._decoder() if method in ("auto", "decoder") else None
        if method == "decoder" and decoder is None:
            raise NotTrained("no segmentation decoder trained yet: POST /train/segmentation (or use method knn)")
        support, n_support = None, 0
        if decoder is None:
            examples, n_support = self.data.all_examples(self.datastore_ref())
            if not examples:
                raise NotTrained("no label maps yet: save one (PUT /datastore/label?tag=final with a label map "
                                 "on the image's grid) and segmentation works from the next request")
            support = SupportSet.build([(e.features, e.targets, e.valid) for e in examples], self.values)
        record = source.record
        arr = np.asarray(record.array)
        if arr.ndim == 2:
            planes, vr = [arr], None
        else:
            from orthofm.io import robust_range

            planes, vr = list(arr), robust_range(arr)
        preps = [self.data.prepare(p, vr) for p in planes]
        feats = self.data.patch_features(preps)
        out = np.zeros(arr.shape, dtype=np.uint8 if max(self.values) < 256 else np.uint16)
        k = int(request.get("k", 10))
        for z, (prep, f) in enumerate(zip(preps, feats)):
            if decoder is not None:
                probs = decoder.probs(f, prep.geometry.canvas_shape)
            else:
                probs = propagate(f, support, k=k)
            lab = labelmap_from_probs(probs, prep, self.values)
            if arr.ndim == 2:
                out[:] = lab
            else:
                out[z] = lab
        ext = str(request.get("result_extension", ".seg.nrrd"))
        ext = ext if ext in EXTENSIONS else ".seg.nrrd"
        path = self.out_path(request, "segmentation" + ext)
        names = {v: n for n, v in self.labels.items()}
        if ext == ".seg.nrrd":
            from orthofm.io.writers import write_seg_nrrd

            segments = [{"name": names[v], "value": v, "color": self.colors.get(names[v], (0.5, 0.5, 0.5))}
                        for v in self.values[1:]]
            write_seg_nrrd(out, record, path, segments)
        else:
            from orthofm.io.writers import write_like

            write_like(out, record, path)
        counts = {names[v]: int((out == v).sum()) for v in self.values[1:]}
        return path, {
            "method": "decoder" if decoder is not None else "knn",
            "support_images": n_support,
            "label_names": dict(self.labels),
            "segments": [{"name": names[v], "value": v, "color": list(self.colors.get(names[v], (0.5, 0.5, 0.5)))}
                         for v in self.values[1:]],
            "pixels": counts,
        }


def _load_decoder(folder: Any) -> Any:
    from orthofm.segment import load_decoder

    return load_decoder(folder)
