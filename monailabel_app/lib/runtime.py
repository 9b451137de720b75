"""The model side of the app: settings from ``--conf`` and ONE backbone object per process for all tasks.

MONAI Label's ``BasicInferTask`` deep-copies its network per task (and per request without a weight file);
OrthoFM's tasks instead ask this runtime for features, so the backbone is loaded once, shared read-only, and its
forwards are batched when requests queue up (:mod:`lib.batching`).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lib.batching import FeatureBatcher
from lib.server.config import ServerSettings, parse_bool

log = logging.getLogger("orthofm.runtime")

DEFAULT_ARCH = "vit_small_patch16_dinov3_qkvb"
DEFAULT_WEIGHTS_DIR = "orthofm_vits16"
DEFAULT_SEGMENTS = {"bone": 1, "cartilage": 2}
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
    """Owns the backbone (loaded once, lazily) and the batcher every task's forward goes through."""

    def __init__(self, settings: AppSettings, server: ServerSettings) -> None:
        self.settings = settings
        self.server = server
        self._backbone: Any = None
        self._lock = threading.Lock()
        self._batcher: FeatureBatcher | None = None
        self._card: dict[str, Any] = {}
        self._note = ""
        self._hooks: list[Any] = []
        torch.set_num_threads(server.threads)

    # -- identity ------------------------------------------------------------------------------
    @property
    def random_init(self) -> bool:
        return self.settings.weights is None

    @property
    def version(self) -> str:
        return str(self._card.get("version", "0.1.0"))

    @property
    def model_id(self) -> str:
        """Identifies the weights (keys the embedding store); random init is marked as such."""
        if self.random_init:
            return f"{self.settings.arch}-random-init"
        return f"{self.settings.arch}-{self.settings.weights.name}"

    def describe(self) -> dict[str, Any]:
        d = {
            "backbone": self.settings.arch,
            "weights": str(self.settings.weights) if self.settings.weights else None,
            "random_init": self.random_init,
            "device": self.settings.device,
            "loaded": self._backbone is not None,
            "batching": self._batcher.stats.as_dict() if self._batcher else None,
            "server": self.server.public_dict(),
        }
        if self.random_init:
            d["warning"] = ("no trained weights found: the backbone is RANDOMLY INITIALISED, results are not "
                            "meaningful (pass --conf weights PATH)")
        if self._note:
            d["note"] = self._note
        return d

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
            bb = models.create_backbone(self.settings.arch)
            log.warning("backbone %s is randomly initialised (no weights)", self.settings.arch)
        else:
            bb = models.load_backbone(str(self.settings.weights))
            card_path = Path(self.settings.weights) / "model_card.json"
            if card_path.is_file():
                self._card = json.loads(card_path.read_text())
            self.settings.arch = getattr(bb, "arch", self.settings.arch)
            log.info("backbone %s loaded from %s", self.settings.arch, self.settings.weights)
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

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bb = self.backbone
        return bb.forward_features(x.to(self.settings.device))

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
