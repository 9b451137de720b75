"""Where heads find their model folder and which precision they run in.

Kept in one small module so the rest of the package never guesses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_DIR", "autocast", "default_cache_dir", "default_model_dir", "forward_features", "inference_dtype",
    "inference_engine", "precision_dtype",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL_DIR = REPO_ROOT / "monailabel_app" / "model" / "orthofm_vits16"


def default_model_dir() -> Path:
    """The default backbone folder: ``$ORTHOFM_MODEL_DIR`` or ``monailabel_app/model/orthofm_vits16``."""
    return Path(os.environ.get("ORTHOFM_MODEL_DIR", DEFAULT_MODEL_DIR))


def default_cache_dir() -> Path:
    """Embedding cache root: ``$ORTHOFM_CACHE/embeddings`` or ``~/.cache/orthofm/embeddings``."""
    from orthofm.utils.runtime import cache_root

    return cache_root() / "embeddings"


def inference_dtype() -> torch.dtype:
    """bf16 when this CPU runs it natively, else float32 (``orthofm.utils.runtime.best_inference_dtype``)."""
    from orthofm.utils.runtime import best_inference_dtype

    return best_inference_dtype()


PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


def precision_dtype(name: str) -> torch.dtype:
    """A config's ``precision`` ("auto", "bf16", "fp32") as the autocast dtype (``resolve_precision`` decides "auto")."""
    from orthofm.utils.runtime import resolve_precision

    return PRECISIONS[resolve_precision(name)]


@contextlib.contextmanager
def autocast(dtype: torch.dtype | None) -> Iterator[None]:
    """CPU autocast to ``dtype`` (no-op for float32/None)."""
    if dtype is None or dtype == torch.float32:
        yield
        return
    with torch.autocast("cpu", dtype=dtype):
        yield


ENGINES = ("auto", "torch", "openvino")


def inference_engine(dtype: torch.dtype | None) -> str:
    """"openvino" or "torch" for a frozen forward in ``dtype``; ``ORTHOFM_ENGINE`` (auto|torch|openvino) decides.

    auto = OpenVINO for the bf16 fast path when it is installed (measured faster, see
    ``orthofm.models.openvino_engine``), torch otherwise and for float32, which stays the reference path.
    """
    choice = os.environ.get("ORTHOFM_ENGINE", "auto").strip().lower() or "auto"
    if choice not in ENGINES:
        raise ValueError(f"ORTHOFM_ENGINE must be one of {list(ENGINES)}, got {choice!r}")
    if choice == "torch":
        return "torch"
    from orthofm.models.openvino_engine import openvino_available

    if not openvino_available():
        if choice == "openvino":
            raise RuntimeError("ORTHOFM_ENGINE=openvino but the openvino package is not installed")
        return "torch"
    if choice == "openvino":
        return "openvino"
    # bf16 through OpenVINO only where the CPU runs bf16 natively: elsewhere (an explicit bf16 request, e.g. the
    # precision tests) its bf16 path was far slower than torch's emulated autocast (826 knees: > 20 min)
    from orthofm.utils.runtime import has_native_bf16

    return "openvino" if dtype == torch.bfloat16 and has_native_bf16() else "torch"


def forward_features(backbone: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``backbone.forward_features(x)`` on the fast path for ``dtype``: OpenVINO or torch autocast.

    OpenVINO serves frozen backbones (``nn.Module``s) in eval mode on CPU inputs of a square canvas. Anything
    else (training, GPU, odd shapes, a model the converter cannot take, a stand-in such as the app's view that
    routes ``forward_features`` through its batcher) runs its own ``forward_features`` under autocast. The
    converted model lives on the backbone object and is rebuilt when its weights change in place (torch's
    version counters).
    """
    ov = _openvino_for(backbone, x, dtype)
    if ov is not None:
        return ov(x)
    with autocast(dtype):
        return backbone.forward_features(x)


class _EngineSlot(dict):
    """Where a backbone keeps its converted model: a copy or a pickle of the backbone starts empty (the
    compiled model can be neither; fine-tuning deep-copies backbones that may already have served). The lock
    makes concurrent first calls (the app's batcher and heatmap threads) convert once."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> _EngineSlot:
        return _EngineSlot()

    def __reduce__(self) -> tuple:
        return (_EngineSlot, ())


def _openvino_for(backbone: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> object | None:
    if not isinstance(backbone, torch.nn.Module):  # a stand-in with its own routing (the app's batched view)
        return None
    if backbone.training or x.device.type != "cpu" or x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        return None
    if inference_engine(dtype) != "openvino":
        return None
    version = sum(p._version for p in backbone.parameters())
    key = (int(x.shape[-1]), dtype, version)
    engines = backbone.__dict__.setdefault("_orthofm_openvino", _EngineSlot())
    if key in engines:
        return engines[key]
    with engines.lock:
        if key not in engines:
            engines.clear()  # an old size or stale weights: keep one converted model per backbone
            from orthofm.models.openvino_engine import OpenVINOFeatures

            try:
                engines[key] = OpenVINOFeatures(
                    backbone, int(x.shape[-1]), precision="bf16" if dtype == torch.bfloat16 else "f32"
                )
            except Exception as exc:  # noqa: BLE001 - a model OpenVINO cannot convert still runs in torch
                log.warning("OpenVINO could not take this backbone (%s); using torch", exc)
                engines[key] = None
        return engines[key]
