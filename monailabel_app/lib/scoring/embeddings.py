"""``embeddings``: compute and cache the feature vector of every image (sidecar store, not the datastore JSON).

The server already does this in the background as images arrive; ``POST /scoring/embeddings`` runs the same
pass in MONAI Label's background subprocess, e.g. after a large folder was copied in.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from monailabel.interfaces.tasks.scoring import ScoringMethod

log = logging.getLogger("orthofm.scoring")


class EmbeddingsScoring(ScoringMethod):
    def __init__(self, runtime: Any) -> None:
        super().__init__("Embed every image with the foundation model (cached; used by the active-learning strategies)")
        self.runtime = runtime
        self.params: dict = {}

    def __call__(self, request: dict, datastore: Any) -> dict:
        t0 = time.perf_counter()
        total = len(datastore.list_images())
        done = 0
        while True:  # in chunks, so progress shows in the task log
            n = self.runtime.sync_embeddings(datastore, compute=True, budget=32)
            done += n
            print(f"embedded {done} new images ({len(self.runtime.embedding_index)}/{total} indexed)", flush=True)
            if n == 0:
                break
        return {"embedded": done, "indexed": len(self.runtime.embedding_index), "images": total,
                "seconds": round(time.perf_counter() - t0, 2)}
