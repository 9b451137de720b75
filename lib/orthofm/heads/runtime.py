"""Where heads find their model folder and which precision they run in.

Kept in one small module so the fallbacks (``orthofm.utils`` precision helpers may not exist in every
checkout) live in one place and the rest of the package never guesses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = [
    "DEFAULT_MODEL_DIR", "autocast", "default_cache_dir", "default_model_dir", "inference_dtype", "precision_dtype",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL_DIR = REPO_ROOT / "monailabel_app" / "model" / "orthofm_vits16"


def default_model_dir() -> Path:
    """The default backbone folder: ``$ORTHOFM_MODEL_DIR`` or ``monailabel_app/model/orthofm_vits16``."""
    return Path(os.environ.get("ORTHOFM_MODEL_DIR", DEFAULT_MODEL_DIR))


def default_cache_dir() -> Path:
    """Embedding cache root: ``$ORTHOFM_CACHE/embeddings`` or ``~/.cache/orthofm/embeddings``."""
    base = os.environ.get("ORTHOFM_CACHE")
    return Path(base) / "embeddings" if base else Path.home() / ".cache" / "orthofm" / "embeddings"


def inference_dtype() -> torch.dtype:
    """bf16 when ``orthofm.utils`` says this CPU runs it natively, else float32 (safe default)."""
    try:
        from orthofm.utils.runtime import best_inference_dtype
    except ImportError:  # older checkout without the runtime helpers
        return torch.float32
    return best_inference_dtype()


PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


def precision_dtype(name: str) -> torch.dtype:
    """A config's ``precision`` ("auto", "bf16", "fp32") as the autocast dtype; "auto" is ``inference_dtype()``."""
    if name == "auto":
        return inference_dtype()
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {['auto', *PRECISIONS]}, got {name!r}")
    return PRECISIONS[name]


@contextlib.contextmanager
def autocast(dtype: torch.dtype | None) -> Iterator[None]:
    """CPU autocast to ``dtype`` (no-op for float32/None)."""
    if dtype is None or dtype == torch.float32:
        yield
        return
    with torch.autocast("cpu", dtype=dtype):
        yield
