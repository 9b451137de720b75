"""Train the ``knee_kl`` head from image-level JSON class labels in the datastore (tag ``cls``).

A class label is a JSON file ``{"label": "KL2"}`` (or ``2``) saved with ``PUT /datastore/label?tag=cls``.
Features come from the cached embedding store, so retraining after a few more labels takes seconds; the head
(``orthofm.heads``: logistic probe, grouped cross-validation, temperature calibration) is published atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .base import OrthoTrainTask, say

_KL = re.compile(r"^(?:kl)?\s*([0-4])$", re.IGNORECASE)


def kl_class(value: Any) -> str | None:
    """'KL2', 'kl 2', '2', 2 -> 'KL2'; anything else (e.g. 'normal') -> None."""
    if isinstance(value, bool):
        return None
    m = _KL.match(str(value).strip())
    return f"KL{m.group(1)}" if m else None


def class_labels(datastore: Any, tag: str) -> dict[str, Any]:
    """image id -> raw ``label`` value of its JSON class label under ``tag``."""
    out = {}
    for image_id in datastore.list_images():
        if not datastore.get_label_by_image_id(image_id, tag):
            continue
        uri = datastore.get_label_uri(image_id, tag)
        if not uri or not uri.endswith(".json"):
            continue
        try:
            out[image_id] = json.loads(Path(uri).read_text()).get("label")
        except (OSError, ValueError, AttributeError):
            continue
    return out


class ClassificationTrainer(OrthoTrainTask):
    def __init__(self, runtime: Any, task: str = "knee_kl", label_tag: str = "cls") -> None:
        super().__init__(runtime, task, f"Train the {task} head on JSON class labels (tag {label_tag})",
                         {"label_tag": label_tag, "kind": ["probe", "knn", "mlp"], "seed": 0, "min_labels": 4})

    def fit(self, request: dict, datastore: Any, out: Path) -> dict:
        from orthofm.heads import fit_head, patient_id_from_path

        tag = str(request.get("label_tag", "cls"))
        kind = str(request.get("kind", "probe"))
        kind = kind if kind in ("probe", "knn", "mlp") else "probe"
        raw = class_labels(datastore, tag)
        labels = {i: kl_class(v) for i, v in raw.items()}
        labels = {i: c for i, c in labels.items() if c is not None}
        skipped = len(raw) - len(labels)
        min_labels = int(request.get("min_labels", 4))
        if len(labels) < min_labels or len(set(labels.values())) < 2:
            raise ValueError(f"need at least {min_labels} KL labels in 2+ grades (tag {tag!r}); have {len(labels)} "
                             f"in {sorted(set(labels.values()))}")
        ids = sorted(labels)
        say(f"{len(ids)} labelled images ({skipped} labels not a KL grade skipped); embedding (cached)")
        paths = [datastore.get_image_uri(i) for i in ids]
        store = self.runtime.embedding_store
        x = store.embed_paths(paths)
        classes = sorted(set(labels.values()))
        y = np.asarray([classes.index(labels[i]) for i in ids], dtype=np.int64)
        groups = [patient_id_from_path(p) for p in paths]
        say(f"fitting {kind} head on {x.shape} features, classes {classes}")
        head = fit_head(x, y, groups, classes, kind=kind, task=self.task, ordinal=True,
                        seed=int(request.get("seed", 0)),
                        backbone={"id": store.backbone_id, "arch": self.runtime.settings.arch},
                        data={"source": "datastore", "label_tag": tag, "n_train": len(ids),
                              "per_class": {c: int((y == k).sum()) for k, c in enumerate(classes)}})
        head.save(out)
        metrics = head.card.metrics.get("train_out_of_sample", {})
        say(f"done: {json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))})}")
        return {"n_train": len(ids), "classes": classes, "kind": kind, "metrics": metrics}
