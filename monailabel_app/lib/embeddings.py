"""Cached embeddings for active learning: a sidecar store on disk, an in-memory index, a background embedder.

Vectors live in ``orthofm.heads.EmbeddingStore`` under ``<studies>/.orthofm/embeddings`` (keyed by content hash
and backbone id), never in the datastore JSON. :class:`EmbeddingIndex` maps datastore ids to those vectors and
keeps them in memory (raw for heads, projected + normalised for the strategies), so choosing the next sample is
a numpy computation, not a pass over the files. :class:`BackgroundEmbedder` embeds new images in a low-priority
thread of the server, through the same shared backbone and batcher as inference.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from orthofm.utils.atomic import atomic_write_text

log = logging.getLogger("orthofm.embeddings")


class SharedBackboneView:
    """Looks like the backbone to ``EmbeddingStore``; its forwards go through the runtime's batcher
    (``exact``: float32 forwards outside the batcher, for near-tie re-checks)."""

    def __init__(self, runtime: Any, exact: bool = False) -> None:
        self._runtime = runtime
        self._exact = exact

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime.backbone, name)

    def eval(self) -> SharedBackboneView:
        return self

    def forward_features(self, x: Any) -> dict:
        return self._runtime.features_float32(x) if self._exact else self._runtime.features(x)


def _signature(path: str) -> tuple[int, int] | None:
    """(mtime_ns, size) of a file, or of a series folder's newest file and total size."""
    try:
        if os.path.isdir(path):
            files = [e for e in os.scandir(path) if e.is_file() and not e.name.startswith(".")]
            if not files:
                return None
            return max(e.stat().st_mtime_ns for e in files), sum(e.stat().st_size for e in files)
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None


class EmbeddingIndex:
    """datastore id -> feature vector, in memory; backed by the sidecar store and a small key map on disk."""

    def __init__(self, store: Any, folder: str | os.PathLike[str], max_dim: int = 128) -> None:
        self.store = store
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._map_path = self.folder / f"index-{store.backbone_id}.json"
        self._lock = threading.RLock()
        self._keys: dict[str, list] = {}  # id -> [mtime_ns, size, content key]
        self._rows: dict[str, int] = {}
        self._raw = np.zeros((0, store.dim), dtype=np.float32)
        self._prepared: np.ndarray | None = None
        self._max_dim = max_dim
        self._dirty = False
        self._load_map()

    # -- persistence of the id -> content-key map (so a restart does not re-hash every file) ----------
    def _load_map(self) -> None:
        try:
            self._keys = json.loads(self._map_path.read_text())
        except (OSError, ValueError):
            self._keys = {}

    def save_map(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            text = json.dumps(self._keys)
            self._dirty = False
        atomic_write_text(self._map_path, text)

    # -- contents ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def has(self, image_id: str) -> bool:
        return image_id in self._rows

    def _put(self, image_id: str, vec: np.ndarray) -> None:
        with self._lock:
            row = self._rows.get(image_id)
            if row is None:
                row = len(self._rows)
                if row >= len(self._raw):
                    grown = np.zeros((max(64, 2 * len(self._raw)), self._raw.shape[1]), dtype=np.float32)
                    grown[: len(self._raw)] = self._raw
                    self._raw = grown
                self._rows[image_id] = row
            self._raw[row] = vec
            self._prepared = None

    def add_vectors(self, ids: list[str], vectors: np.ndarray) -> None:
        """Insert precomputed vectors (benchmarks, simulations)."""
        for i, v in zip(ids, np.asarray(vectors, dtype=np.float32)):
            self._put(i, v)

    def sync(self, items: dict[str, str], compute: bool = False, budget: int | None = None,
             stop: threading.Event | None = None) -> int:
        """Bring ``{id: path}`` up to date; with ``compute`` embed missing ones (at most ``budget``).

        Returns how many images were embedded. Unchanged files are recognised by (mtime, size) without
        reading them."""
        done = 0
        for image_id, path in items.items():
            if stop is not None and stop.is_set():
                break
            sig = _signature(path)
            if sig is None:
                continue
            known = self._keys.get(image_id)
            if known and tuple(known[:2]) == sig and image_id in self._rows:
                continue
            key = known[2] if known and tuple(known[:2]) == sig else self.store.key(path)
            vec = self.store.get(key)
            if vec is None:
                if not compute or (budget is not None and done >= budget):
                    with self._lock:
                        self._keys[image_id] = [sig[0], sig[1], key]
                        self._dirty = True
                    continue
                try:
                    vec = self.store.embed_paths([path])[0]
                except Exception as exc:  # noqa: BLE001 - one unreadable image must not stop the embedder
                    log.warning("could not embed image %s (%s)", image_id, type(exc).__name__)
                    continue
                done += 1
            with self._lock:
                self._keys[image_id] = [sig[0], sig[1], key]
                self._dirty = True
            self._put(image_id, vec)
        return done

    def forget_missing(self, ids: set[str]) -> None:
        """Drop rows of images no longer in the datastore."""
        with self._lock:
            gone = [i for i in self._rows if i not in ids]
            if not gone:
                return
            keep = [i for i in self._rows if i in ids]
            raw = self._raw[[self._rows[i] for i in keep]] if keep else self._raw[:0]
            self._rows = {i: r for r, i in enumerate(keep)}
            self._raw = raw.copy()
            for i in gone:
                self._keys.pop(i, None)
            self._dirty = True
            self._prepared = None

    def matrix(self, ids: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids present, raw (n, F), prepared (n, <=128)) for the given ids (all when None)."""
        from orthofm.active import prepare_features

        with self._lock:
            if self._prepared is None:
                n = len(self._rows)
                self._prepared = prepare_features(self._raw[:n], self._max_dim) if n else np.zeros(
                    (0, self._max_dim), dtype=np.float32)
            if ids is None:  # all rows, in row order: views, no copy (100k x 768 floats is 300 MB)
                n = len(self._rows)
                return list(self._rows), self._raw[:n], self._prepared
            present = [i for i in ids if i in self._rows]
            rows = [self._rows[i] for i in present]
            return present, self._raw[rows], self._prepared[rows]


class BackgroundEmbedder:
    """Embeds images that have no cached vector yet, a few at a time, in a daemon thread of the server."""

    def __init__(self, runtime: Any, interval: float = 30.0, batch: int = 8) -> None:
        self.runtime = runtime
        self.interval = interval
        self.batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.app: Any = None
        self.embedded = 0
        self.last_error: str | None = None

    def __call__(self, app: Any) -> None:
        """Ready hook: start with the server."""
        self.app = app
        self._thread = threading.Thread(target=self._loop, name="embedder", daemon=True)
        self._thread.start()

    def notify(self, image_id: str) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        from lib.server.http_app import lower_thread_priority

        lower_thread_priority(15)  # background work: below inference, far below the event loop
        while not self._stop.is_set():
            try:
                n = self.runtime.sync_embeddings(self.app.datastore(), compute=True, budget=self.batch,
                                                 stop=self._stop)
                self.embedded += n
                self.last_error = None
                if n:
                    continue  # more may be waiting: keep going, a few at a time
            except Exception as exc:  # noqa: BLE001 - keep the thread alive; reported in /info
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                log.warning("background embedding failed: %s", type(exc).__name__)
            self._wake.wait(self.interval)
            self._wake.clear()
            time.sleep(0.05)

    def status(self) -> dict:
        return {"running": self._thread is not None and self._thread.is_alive(), "embedded": self.embedded,
                "last_error": self.last_error}
