"""Reading tensors out of weight files without ever running code from them.

``.pth/.pt/.bin/.ckpt`` files are loaded with ``torch.load(weights_only=True)``; a pickle that wants
to import anything beyond tensors and plain containers is refused with a clear error, never executed.
Training checkpoints are unwrapped (``{'model': ...}``, ``{'teacher': ...}``, DDP ``module.`` prefixes)
down to the backbone's own keys; projection heads and other training-only entries are dropped and
reported.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import WeightFormatError

__all__ = ["PICKLE_SUFFIXES", "SAFETENSORS_SUFFIXES", "Unwrapped", "read_tensors", "unwrap_state_dict"]

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".tar")
SAFETENSORS_SUFFIXES = (".safetensors",)
# Nested dicts a training script may wrap the weights in, most useful first (teacher = EMA weights
# that DINO-family papers evaluate; ``model_ema`` likewise).
WRAPPER_KEYS = ("teacher", "model_ema", "ema", "state_dict", "model", "module", "backbone", "student", "net")
# Where a ViT's patch embedding lives in each known layout; everything before it is a wrapper prefix.
ANCHORS = (
    "patch_embed.proj.weight",  # DINOv3/DINOv2 official, timm
    "embeddings.patch_embeddings.projection.weight",  # HF ViTMAE / DINOv2
    "embeddings.patch_embeddings.weight",  # HF DINOv3ViT
)


def _header(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def read_tensors(path: Path) -> dict:
    """The raw object stored in a weights file (a dict of tensors, possibly nested), read safely."""
    if not path.is_file():
        raise WeightFormatError(f"{path}: no such file", path=str(path))
    size = path.stat().st_size
    if size == 0:
        raise WeightFormatError(f"{path}: the file is empty (0 bytes)", path=str(path))
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    head = _header(path)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return _read_pickle(path, zipped=head[:2] == b"PK")
    if _looks_like_safetensors(head, size):
        return _read_safetensors(path)
    raise WeightFormatError(
        f"{path}: not a weights file this importer knows (first bytes {head[:8]!r}); expected a PyTorch "
        "checkpoint (.pth/.pt/.bin, zip or pickle), a .safetensors file, a Hugging Face folder or an "
        "OrthoFM folder",
        path=str(path), looks_like="unknown binary",
    )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < size and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightFormatError(
            f"{path}: damaged or truncated safetensors file ({exc})", path=str(path), looks_like="safetensors"
        ) from exc


def _read_pickle(path: Path, zipped: bool) -> dict:
    kind = "PyTorch zip checkpoint" if zipped else "legacy PyTorch/pickle checkpoint"
    if zipped:
        _check_zip(path, kind)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        raise WeightFormatError(
            f"{path}: refused to load: the {kind} contains pickled Python objects/code, not only tensors "
            f"(torch.load weights_only=True rejected it: {_pickle_reason(exc)}). OrthoFM never executes code "
            "from weight files; re-save the state dict alone (torch.save(model.state_dict(), ...)) or "
            "convert it to .safetensors in an environment you trust",
            path=str(path), looks_like=kind,
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightFormatError(
            f"{path}: {kind} is truncated or corrupt ({_first_line(exc)})", path=str(path), looks_like=kind
        ) from exc
    if not isinstance(obj, Mapping):
        raise WeightFormatError(
            f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)",
            path=str(path), looks_like=kind,
        )
    return dict(obj)


def _check_zip(path: Path, kind: str) -> None:
    """Verify the zip directory and every entry's CRC: torch.load itself does not notice flipped bytes in
    tensor data and would hand back silently wrong weights."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise WeightFormatError(
            f"{path}: {kind} is truncated or corrupt ({_first_line(exc)}); download it again",
            path=str(path), looks_like=kind,
        ) from exc
    if bad is not None:
        raise WeightFormatError(
            f"{path}: {kind} is corrupt: checksum (CRC) mismatch in entry {bad!r}; download it again",
            path=str(path), looks_like=kind,
        )


def _pickle_reason(exc: BaseException) -> str:
    """The specific line of torch's refusal (which global it met), without its generic advice."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    specific = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "WeightsUnpickler" in ln]
    return (specific[0] if specific else _first_line(exc))[:300]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@dataclass
class Unwrapped:
    """A flat backbone state dict and how it was found inside the file."""

    state_dict: dict[str, torch.Tensor]
    wrapper: list[str] = field(default_factory=list)  # nested dict keys walked, e.g. ['teacher']
    prefix: str = ""  # key prefix stripped, e.g. 'module.backbone.backbone.'
    dropped: list[str] = field(default_factory=list)  # keys outside the backbone (heads, optimiser, ...)

    def describe(self) -> str:
        where = "".join(f"[{k!r}]" for k in self.wrapper)
        parts = []
        if where:
            parts.append(f"inside {where}")
        if self.prefix:
            parts.append(f"under prefix {self.prefix!r}")
        if self.dropped:
            shown = ", ".join(self.dropped[:5]) + (", ..." if len(self.dropped) > 5 else "")
            parts.append(f"dropped {len(self.dropped)} non-backbone key(s) ({shown})")
        return "; ".join(parts) if parts else "plain state dict"


def _is_tensor_dict(obj: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def _flatten(obj: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[prefix + str(k)] = v
        elif isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
    return out


def unwrap_state_dict(obj: Mapping, path: Path) -> Unwrapped:
    """Walk dict wrappers and strip the longest wrapper prefix in front of the patch embedding."""
    wrapper: list[str] = []
    while not _is_tensor_dict(obj):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping) and obj.get(k)), None)
        if key is None:
            flat = _flatten(obj)
            if flat:  # e.g. {'teacher': {...}, 'student': {...}} mixed with non-dict entries
                obj = flat
                break
            raise WeightFormatError(
                f"{path}: no tensors found; top-level keys: {', '.join(map(str, list(obj)[:10]))}",
                path=str(path), looks_like="checkpoint without a state dict",
            )
        wrapper.append(key)
        obj = obj[key]
    flat = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    prefix = _backbone_prefix(flat)
    if prefix is None:
        return Unwrapped(flat, wrapper)
    kept = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    dropped = [k for k in flat if not k.startswith(prefix)]
    if dropped:
        log.debug("%s: dropping %d key(s) outside %r (e.g. %s)", path, len(dropped), prefix, dropped[:3])
    return Unwrapped(kept, wrapper, prefix, dropped)


def _backbone_prefix(flat: Mapping[str, torch.Tensor]) -> str | None:
    """Prefix of the patch-embedding key; prefers the teacher when teacher and student are both present."""
    candidates = []
    for key in flat:
        for anchor in ANCHORS:
            if key.endswith(anchor) and (len(key) == len(anchor) or key[-len(anchor) - 1] == "."):
                candidates.append(key[: len(key) - len(anchor)])
    if not candidates:
        return None

    def rank(prefix: str) -> tuple[int, int]:
        parts = prefix.split(".")
        return (0 if "teacher" in parts or "model_ema" in parts else 1 if "student" not in parts else 2, len(prefix))

    return min(set(candidates), key=rank)
