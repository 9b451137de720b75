"""The model side of the app: settings from ``--conf`` and ONE backbone object per process for all tasks.

MONAI Label's ``BasicInferTask`` deep-copies its network per task (and per request without a weight file);
OrthoFM's tasks instead ask this runtime for features, so the backbone is loaded once, shared read-only, and its
forwards are batched when requests queue up (:mod:`lib.batching`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lib.batching import FeatureBatcher
from lib.server.config import ServerSettings, parse_bool
from orthofm.utils.runtime import limit_blas_threads

log = logging.getLogger("orthofm.runtime")

DEFAULT_ARCH = "vit_small_patch16_dinov3_qkvb"
DEFAULT_WEIGHTS_DIR = "orthofm_vits16"
DEFAULT_SEGMENTS = {"bone": 1, "cartilage": 2}
RANDOM_INIT_WARNING = ("no trained weights found: the backbone is RANDOMLY INITIALISED, results are not "
                       "meaningful (pass --conf weights PATH)")
DEFAULT_COLORS = {"bone": (0.95, 0.84, 0.57), "cartilage": (0.30, 0.69, 0.29)}


def _parse_segments(conf: dict[str, str]) -> tuple[dict[str, int], dict[str, tuple[float, float, float]]]:
    """``--conf segment_labels "bone,cartilage"`` (values 1..n) or a JSON object name -> value;
    ``--conf segment_colors '{"bone": [1, 0.8, 0.6]}'`` (0-1 RGB)."""
    raw = conf.get("segment_labels")
    if not raw:
        labels = dict(DEFAULT_SEGMENTS)
    elif raw.strip().startswith("{"):
        obj = json.loads(raw)
        labels = {str(k): int(v) for k, v in obj.items()}
    else:
        labels = {name.strip(): i + 1 for i, name in enumerate(n for n in raw.split(",") if n.strip())}
    if not labels or any(v < 1 or v > 255 for v in labels.values()) or len(set(labels.values())) != len(labels):
        raise ValueError("--conf segment_labels: need unique label values in 1..255")
    colors = {k: DEFAULT_COLORS.get(k, _palette(v)) for k, v in labels.items()}
    if conf.get("segment_colors"):
        for k, c in json.loads(conf["segment_colors"]).items():
            if k not in labels or len(c) != 3 or not all(0 <= float(x) <= 1 for x in c):
                raise ValueError(f"--conf segment_colors: bad entry {k!r}: {c!r} (need a known label, 3 values 0-1)")
            colors[k] = tuple(float(x) for x in c)
    return labels, colors


def _palette(i: int) -> tuple[float, float, float]:
    base = [(0.86, 0.37, 0.34), (0.35, 0.55, 0.85), (0.93, 0.69, 0.13), (0.58, 0.40, 0.74), (0.30, 0.75, 0.75)]
    return base[(i - 1) % len(base)]


@dataclass
class AppSettings:
    """Model-side configuration (``--conf`` keys: weights, arch, device, models, heatmap_method, segment_*)."""

    app_dir: Path
    weights: Path | None = None
    arch: str = DEFAULT_ARCH
    device: str = "cpu"
    models: str = "all"
    heatmap_method: str = "auto"
    segment_labels: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SEGMENTS))
    segment_colors: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    embed_on_ingest: bool = True

    @property
    def model_dir(self) -> str:
        return str(self.app_dir / "model")

    @classmethod
    def from_conf(cls, conf: dict[str, str], app_dir: str) -> AppSettings:
        s = cls(app_dir=Path(app_dir))
        weights = conf.get("weights")
        if weights and weights.lower() not in ("none", "random"):
            s.weights = Path(weights).expanduser()
            if not s.weights.exists():
                raise ValueError(f"--conf weights: {s.weights} does not exist")
        elif weights is None:
            default = Path(s.model_dir) / DEFAULT_WEIGHTS_DIR
            s.weights = default if (default / "backbone.safetensors").exists() else None
        s.arch = conf.get("arch", s.arch)
        s.device = conf.get("device", s.device)
        if s.device != "cpu" and not s.device.startswith("cuda"):
            raise ValueError(f"--conf device: {s.device!r} (use cpu or cuda[:N])")
        s.models = conf.get("models", s.models)
        s.heatmap_method = conf.get("heatmap_method", s.heatmap_method)
        s.segment_labels, s.segment_colors = _parse_segments(conf)
        if "embed_on_ingest" in conf:
            s.embed_on_ingest = parse_bool(conf["embed_on_ingest"], "embed_on_ingest")
        return s

    def select_models(self, available: dict[str, type]) -> list[str]:
        if self.models.strip().lower() == "all":
            return list(available)
        wanted = [m.strip() for m in self.models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in available]
        if unknown:
            raise ValueError(f"--conf models: unknown {unknown}; available: {sorted(available)} or 'all'")
        return wanted


class ModelRuntime:
    """Owns the backbone (loaded once, lazily), the batcher every forward goes through, the embedding index,
    and the published heads / normal banks (reloaded when a training publishes a new version)."""

    def __init__(self, settings: AppSettings, server: ServerSettings) -> None:
        self.settings = settings
        self.server = server
        self._backbone: Any = None
        self._lock = threading.RLock()
        self._batcher: FeatureBatcher | None = None
        self._card: dict[str, Any] = {}
        self._hooks: list[Any] = []
        self._sidecar: Path | None = None
        self._store: Any = None
        self._exact_store: Any = None
        self._index: Any = None
        self._heads: dict[str, tuple[Any, Any]] = {}
        self._tuned_stores: dict[str, tuple[Any, tuple[Any, Any]]] = {}
        self._engines: dict[tuple, Any] = {}
        self.embedder: Any = None
        self.datastore: Any = None
        self._objects: dict[Any, Any] = {}
        torch.set_num_threads(server.threads)
        limit_blas_threads()  # numpy's OpenBLAS threads spin after each call and slow the next forward

    # -- identity ------------------------------------------------------------------------------
    @property
    def random_init(self) -> bool:
        return self.settings.weights is None

    @property
    def version(self) -> str:
        return str(self._card.get("version", "0.1.0"))

    def describe(self) -> dict[str, Any]:
        d = {
            "backbone": self.settings.arch,
            "weights": self.settings.weights.name if self.settings.weights else None,
            "random_init": self.random_init,
            "device": self.settings.device,
            "loaded": self._backbone is not None,
            "batching": self._batcher.stats.as_dict() if self._batcher else None,
            "embeddings": {"indexed": len(self._index) if self._index is not None else 0,
                           **(self.embedder.status() if self.embedder is not None else {})},
            "server": self.server.public_dict(),
        }
        if self.random_init:
            d["warning"] = RANDOM_INIT_WARNING
        return d

    def result_meta(self) -> dict[str, Any]:
        """Stamped on every result, so a number is never shown without what produced it."""
        meta = {"backbone": self.settings.arch, "weights": self.settings.weights.name if self.settings.weights
                else None, "random_init": self.random_init}
        if self.random_init:
            meta["warning"] = RANDOM_INIT_WARNING
        return meta

    # -- the backbone --------------------------------------------------------------------------
    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            with self._lock:
                if self._backbone is None:
                    self._backbone = self._load()
        return self._backbone

    def _load(self) -> Any:
        from orthofm import models

        if self.settings.weights is None:
            # seeded: the server, its train/scoring subprocesses and a restart must build the SAME random
            # weights, or heads and cached embeddings would not match the features they are used with
            with torch.random.fork_rng():
                torch.manual_seed(0)
                bb = models.create_backbone(self.settings.arch)
            log.warning("backbone %s is randomly initialised (no weights)", self.settings.arch)
        else:
            bb = models.load_backbone(str(self.settings.weights))
            card_path = Path(self.settings.weights) / "model_card.json"
            if card_path.is_file():
                self._card = json.loads(card_path.read_text())
            self.settings.arch = getattr(bb, "arch", self.settings.arch)
            log.info("backbone %s loaded from %s", self.settings.arch, self.settings.weights.name)
        bb.eval().requires_grad_(False)
        return bb.to(self.settings.device)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features of a normalised (B,3,H,W) batch, batched with concurrent callers."""
        if self._batcher is None:
            with self._lock:
                if self._batcher is None:
                    self._batcher = FeatureBatcher(
                        self._forward, max_batch=self.server.max_batch, wait_ms=self.server.batch_wait_ms
                    )
        return self._batcher(x)

    def features_float32(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features in float32, outside the batcher: the near-tie re-check of a grade (rare)."""
        with torch.inference_mode():
            out = self.backbone.forward_features(x.to(self.settings.device).float())
        return {k: v.float() for k, v in out.items()}

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from orthofm.heads.runtime import forward_features, inference_dtype

        out = forward_features(self.backbone, x.to(self.settings.device), inference_dtype())
        return {k: v.float() for k, v in out.items()}

    def read(self, path: str | Path) -> Any:
        """``orthofm.io.read_image`` with the server's size limit (ImageReadError on bad input)."""
        import warnings

        from orthofm.io import SpacingUnknownWarning, read_image

        limit = max(self.server.max_pixels_2d, self.server.max_voxels_3d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpacingUnknownWarning)
            return read_image(str(path), max_pixels=limit)

    # -- per-project sidecar: embeddings, trained heads, normal banks -----------------------------
    def cached(self, key: Any, factory: Any) -> Any:
        """A small keyed cache for loaded artefacts (decoders); the newest 8 are kept."""
        with self._lock:
            if key not in self._objects:
                self._objects[key] = factory()
                while len(self._objects) > 8:
                    self._objects.pop(next(iter(self._objects)))
            return self._objects[key]

    def attach_datastore(self, datastore: Any) -> None:
        self.datastore = datastore
        root = getattr(datastore, "sidecar_path", None)
        self._sidecar = Path(root) if root else Path(self.settings.model_dir) / ".sidecar"
        self._sidecar.mkdir(parents=True, exist_ok=True)

    @property
    def sidecar(self) -> Path:
        if self._sidecar is None:
            raise RuntimeError("no datastore attached to the model runtime")
        return self._sidecar

    @property
    def embedding_store(self) -> Any:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from lib.embeddings import SharedBackboneView
                    from orthofm.heads import EmbeddingStore

                    self._store = EmbeddingStore(self.sidecar / "embeddings", SharedBackboneView(self),
                                                 batch_size=8, progress=False)
        return self._store

    @property
    def exact_embedding_store(self) -> Any:
        """The float32 twin of ``embedding_store`` (same sidecar, its own folder) for near-tie re-checks."""
        if self._exact_store is None:
            with self._lock:
                if self._exact_store is None:
                    from lib.embeddings import SharedBackboneView
                    from orthofm.heads import EmbeddingStore

                    self._exact_store = EmbeddingStore(self.sidecar / "embeddings",
                                                       SharedBackboneView(self, exact=True),
                                                       dtype=torch.float32, batch_size=8, progress=False)
        return self._exact_store

    @property
    def embedding_index(self) -> Any:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    from lib.embeddings import EmbeddingIndex

                    self._index = EmbeddingIndex(self.embedding_store, self.sidecar / "embeddings")
        return self._index

    def sync_embeddings(self, datastore: Any, compute: bool = False, budget: int | None = None,
                        stop: Any = None) -> int:
        """Index every datastore image that has a cached vector; embed up to ``budget`` missing ones."""
        ids = list(datastore.list_images())
        items = {}
        for i in ids:
            if self._index is not None and self._index.has(i) and not compute:
                continue
            uri = _local_uri(datastore, i)
            if uri:
                items[i] = uri
        index = self.embedding_index
        n = index.sync(items, compute=compute, budget=budget, stop=stop)
        index.forget_missing(set(ids))
        index.save_map()
        return n

    def heads_root(self) -> Path:
        return self.sidecar / "heads"

    def banks_root(self) -> Path:
        return self.sidecar / "banks"

    def _shipped(self, kind: str, name: str) -> Path | None:
        w = self.settings.weights
        if w is None or not w.is_dir():
            return None
        path = w / kind / name
        return path if path.is_dir() else None

    def head_folder(self, task: str) -> Path | None:
        """The head to serve: this project's latest published one, else the one shipped with the weights."""
        from lib.publish import current

        return current(self.heads_root() / task) or self._shipped("heads", task)

    def head(self, task: str) -> Any | None:
        """The trained head for ``task`` (``orthofm.heads.TrainedHead``), reloaded when a new one is published."""
        folder = self.head_folder(task)
        if folder is None:
            return None
        card = folder / "card.json"
        stamp = (str(folder), card.stat().st_mtime_ns if card.exists() else 0)
        cached = self._heads.get(task)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        from orthofm.heads import load_head

        head = load_head(folder)
        self._heads[task] = (stamp, head)
        log.info("serving %s head %s", task, folder.name)
        return head

    def head_stores(self, task: str, head: Any) -> tuple[Any, Any]:
        """(fast, float32) embedding stores of the features ``head`` reads.

        A head on frozen features reads the shared stores (the batched engine). A fine-tuned head reads the base
        backbone with its own tuned last blocks: a private copy of the backbone per served head (the shared
        engine runs the frozen weights only), cached in the same sidecar under the tuned weights' own id, so its
        vectors never mix with the frozen ones the active-learning strategies use.
        """
        if head.reads_frozen_features:
            return self.embedding_store, self.exact_embedding_store
        with self._lock:
            cached = self._tuned_stores.get(task)
            if cached is None or cached[0] is not head:  # a newly published head gets its own stores
                from orthofm.heads import EmbeddingStore
                from orthofm.heads.runtime import inference_dtype

                tuned = head.feature_backbone(self.backbone).eval().requires_grad_(False)
                root = self.sidecar / "embeddings"
                stores = (EmbeddingStore(root, tuned, dtype=inference_dtype(), batch_size=8, progress=False),
                          EmbeddingStore(root, tuned, dtype=torch.float32, batch_size=8, progress=False))
                cached = (head, stores)
                self._tuned_stores[task] = cached
                log.info("serving fine-tuned %s head (%d tuned blocks, features %s)", task, head.head.n_blocks,
                         stores[0].backbone_id)
        return cached[1]

    def bank_folder(self, anatomy: str) -> Path | None:
        from lib.publish import current

        return current(self.banks_root() / anatomy) or self._shipped("banks", anatomy)

    def heatmap_engine(self, method: str, anatomy: str) -> Any:
        """``orthofm.heatmaps.HeatmapEngine`` on the shared backbone; rebuilt when a new bank is published."""
        from orthofm.heatmaps import HeatmapEngine, NormalBank

        bank_dir = self.bank_folder(anatomy) if method in ("patchknn", "both", "auto") else None
        if method == "auto":
            method = "patchknn" if bank_dir is not None else "recon"
        key = (method, str(bank_dir) if bank_dir else None)
        engine = self._engines.get(key)
        if engine is None:
            bank = NormalBank.load(bank_dir) if bank_dir is not None else None
            engine = HeatmapEngine(self.backbone, method, bank)
            self._engines = {key: engine}  # one engine alive at a time
        return engine

    # -- lifecycle -----------------------------------------------------------------------------
    def add_ready_hook(self, hook: Any) -> None:
        """Called with the app when the server is up (e.g. start the background embedder)."""
        self._hooks.append(hook)

    def on_ready(self, app: Any) -> None:
        for hook in self._hooks:
            hook(app)

    def notify_new_image(self, image_id: str) -> None:
        for hook in self._hooks:
            notify = getattr(hook, "notify", None)
            if notify is not None:
                notify(image_id)

    def close(self) -> None:
        for hook in self._hooks:
            stop = getattr(hook, "stop", None)
            if stop is not None:
                stop()
        if self._batcher is not None:
            self._batcher.close()


def _local_uri(datastore: Any, image_id: str) -> str | None:
    """A local file/folder for the image without triggering a download (DICOMweb series not cached yet)."""
    objects = getattr(getattr(datastore, "_datastore", None), "objects", None)
    if objects is not None and image_id not in objects:
        return None
    uri = datastore.get_image_uri(image_id)
    return uri if uri and os.path.exists(uri) else None
