"""MONAI Label ``Strategy`` classes over cached embeddings; the selection maths is ``orthofm.active``.

Labeled = the image has a label under any tag except ``original`` (model output): a JSON class label (tag ``cls``)
counts as well as a label map (tag ``final``). Images served to someone in the last ``reserve_seconds`` are
skipped while others remain, so two annotators asking at once get different images.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.strategy import Strategy

from lib.server.validation import Param
from orthofm.active import SelectionInput, select

log = logging.getLogger("orthofm.activelearning")

MODEL_TAGS = ("original",)
# What `uncertainty` and `hybrid` use until a head is trained: the KL replays (docs/monailabel_app.md, "Active-learning
# replay") found coreset ahead of random in the cold start on both default backbones, and typiclust behind it.
COLD_START_STRATEGY = "coreset"
COMMON_PARAMS = {
    "reserve_seconds": Param((int, float), lo=0, hi=7 * 86400),
    "seed": Param(int, lo=0, hi=2**31 - 1),
}


def _objects(datastore: Any) -> dict[str, Any]:
    """id -> MONAI Label ``ImageLabelModel`` (no JSON dump: this runs on every next-sample request)."""
    model = getattr(datastore, "_datastore", None)
    return model.objects if model is not None else {}


def labeled_ids(datastore: Any) -> set[str]:
    return {i for i, obj in _objects(datastore).items() if any(t not in MODEL_TAGS for t in obj.labels)}


def recently_served(datastore: Any, ids: list[str], seconds: float) -> set[str]:
    if seconds <= 0:
        return set()
    now = time.time()
    out = set()
    objects = _objects(datastore)
    for i in ids:
        obj = objects.get(i)
        served = obj.image.info.get("strategy", {}) if obj is not None else {}
        if any(now - float(v.get("ts", 0)) < seconds for v in served.values() if isinstance(v, dict)):
            out.add(i)
    return out


class EmbeddingStrategy(Strategy):
    """One of ``orthofm.active.STRATEGIES`` served at ``/activelearning/<name>``."""

    def __init__(self, name: str, runtime: Any, description: str, task: str = "knee_kl") -> None:
        super().__init__(description)
        self.name = name
        self.runtime = runtime
        self.task = task
        self.params: dict[str, Param] = dict(COMMON_PARAMS)
        if name in ("uncertainty", "hybrid"):
            self.params["kind"] = Param(str, choices=("entropy", "margin"))
            self.params["task"] = Param(str, max_len=64)

    def info(self) -> dict:
        return {"description": self.description, "params": sorted(self.params)}

    def __call__(self, request: dict, datastore: Any) -> dict | None:
        t0 = time.perf_counter()
        ids = list(datastore.list_images())
        labeled = labeled_ids(datastore)
        unlabeled = [i for i in ids if i not in labeled]
        if not unlabeled:
            return None
        reserved = recently_served(datastore, unlabeled, float(request.get("reserve_seconds", 600)))
        pool = [i for i in unlabeled if i not in reserved] or unlabeled
        seed = int(request.get("seed", int(time.time())))
        note = None
        name = self.name
        if name == "random":
            chosen = pool[int(np.random.default_rng(seed).integers(len(pool)))]
            return {"id": chosen, "selected_by": name, "candidates": len(pool),
                    "seconds": round(time.perf_counter() - t0, 4)}
        self.runtime.sync_embeddings(datastore, compute=False)
        present, raw, x = self.runtime.embedding_index.matrix()
        row = {i: r for r, i in enumerate(present)}
        cand = np.asarray([row[i] for i in pool if i in row], dtype=np.int64)
        lab = np.asarray([row[i] for i in labeled if i in row], dtype=np.int64)
        if len(cand) == 0:  # nothing embedded yet (the background embedder is still running)
            chosen = pool[int(np.random.default_rng(seed).integers(len(pool)))]
            return {"id": chosen, "selected_by": name, "fallback": "random",
                    "note": "no cached embeddings yet: picked at random", "candidates": len(pool)}
        probs = None
        if name in ("uncertainty", "hybrid"):
            task = str(request.get("task", self.task))
            head = self.runtime.head(task)
            if head is None:
                note = f"no trained {task} head yet: used {COLD_START_STRATEGY} (diversity) instead"
                name = COLD_START_STRATEGY
            elif not head.reads_frozen_features:
                note = (f"the served {task} head is fine-tuned: its features are not the cached embeddings, and "
                        f"scoring every candidate would need a forward pass each; used {COLD_START_STRATEGY} "
                        f"(diversity) instead. Training {task} in the app publishes a head on the cached embeddings.")
                name = COLD_START_STRATEGY
            else:
                probs = head.predict_proba(raw)  # every row (a view): cheaper than copying the candidates
        kwargs = {"kind": request["kind"]} if "kind" in request and name in ("uncertainty", "hybrid") else {}
        picked = select(name, SelectionInput(x, lab, cand, probs, seed), budget=1, **kwargs)
        chosen = present[int(picked[0])]
        out = {"id": chosen, "selected_by": self.name, "candidates": len(cand),
               "not_embedded": len(pool) - len(cand), "seconds": round(time.perf_counter() - t0, 4)}
        if note:
            out["note"] = note
        if name != self.name:
            out["fallback"] = name
        return out
