"""OrthoFM's own weights format: a folder with ``backbone.safetensors`` + ``model_card.json``
(+ ``mae_decoder.safetensors`` when the backbone has a reconstruction decoder).

The card carries everything needed to rebuild the model without guessing (``BackboneConfig``), the
parameter counts, checksums of the weight files, and free-form sections (data, recipe, compute,
metrics) so every kept checkpoint says what made it. A folder is written next to its final place and
renamed into it, so readers never see half a checkpoint; other content of an existing model folder
(``heads/``, ``banks/``) is kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from ..utils.atomic import fsync_file
from .backbone import Backbone, BackboneConfig, backbone_from_config
from .errors import WeightFormatError, strict_load
from .pretrained import get_weights_cfg

__all__ = [
    "BACKBONE_FILE",
    "CARD_NAME",
    "DECODER_FILE",
    "FORMAT_VERSION",
    "is_orthofm_folder",
    "load_orthofm",
    "read_model_card",
    "save_orthofm",
]

FORMAT = "orthofm"
FORMAT_VERSION = 1
CARD_NAME = "model_card.json"
BACKBONE_FILE = "backbone.safetensors"
DECODER_FILE = "mae_decoder.safetensors"
DECODER_PREFIX = "mae_decoder."
RESERVED = frozenset({"format", "format_version", "backbone", "num_params", "dtype", "files", "created",
                      "software", "pretrained_cfg"})
_FP16_MAX = 65504.0


def is_orthofm_folder(path: Path) -> bool:
    return path.is_dir() and (path / CARD_NAME).is_file()


def read_model_card(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model_card.json`` of an OrthoFM folder (validated: format and version)."""
    folder = Path(folder)
    path = folder / CARD_NAME if folder.is_dir() else folder
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightFormatError(f"{folder}: no {CARD_NAME}; not an OrthoFM model folder", path=str(folder)) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightFormatError(f"{path}: unreadable model card ({exc})", path=str(folder),
                                looks_like="OrthoFM folder") from exc
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise WeightFormatError(f"{path}: 'format' is {card.get('format') if isinstance(card, dict) else None!r}, "
                                f"expected {FORMAT!r}", path=str(folder), looks_like="JSON file")
    version = card.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise WeightFormatError(
            f"{path}: format_version {version!r} is newer than this OrthoFM understands ({FORMAT_VERSION}); "
            "update OrthoFM", path=str(folder), looks_like="OrthoFM folder",
        )
    if "backbone" not in card:
        raise WeightFormatError(f"{path}: model card has no 'backbone' config", path=str(folder),
                                looks_like="OrthoFM folder")
    return card


def _storage(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp16 for matrices; vectors (norms, biases, layer-scale gammas ~1e-5) stay fp32 where fp16 is too coarse."""
    t = t.detach().to("cpu")
    if not t.is_floating_point():
        return t.contiguous().clone()
    if dtype == torch.float16 and t.ndim >= 2 and float(t.abs().max()) <= _FP16_MAX:
        return t.to(torch.float16).contiguous()
    return t.to(torch.float32).contiguous().clone()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    os.chmod(path, 0o666 & ~_umask())  # readable like any new file (the server may run as another user)
    try:
        fsync_file(path)
    except OSError:  # some file systems refuse fsync; the rename that follows is still atomic
        pass


def _software() -> dict[str, str]:
    import timm

    out = {"torch": torch.__version__, "timm": timm.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a project requirement
        pass
    from importlib.metadata import PackageNotFoundError, version

    with contextlib.suppress(PackageNotFoundError):  # metadata is missing in a bare source checkout
        out["orthofm"] = version("orthofm")
    return out


def save_orthofm(
    backbone: Backbone, folder: str | os.PathLike[str], card: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``backbone`` (+ its MAE decoder) as an OrthoFM folder; returns the folder path.

    ``card``: free-form sections (e.g. ``data``, ``recipe``, ``compute``, ``metrics``, ``source``) merged
    into ``model_card.json``. ``dtype``: ``torch.float16`` (default; vectors kept fp32) or ``torch.float32``.
    """
    from safetensors.torch import save_file

    if dtype not in (torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype}")
    card = dict(card or {})
    clash = RESERVED & set(card)
    if clash:
        raise ValueError(f"card sections {sorted(clash)} are written by save_orthofm itself; rename them")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_orthofm_folder(folder):
        raise FileExistsError(f"{folder} is a non-empty folder without {CARD_NAME}; refusing to write into it")
    config: BackboneConfig = backbone.config
    state = backbone.state_dict()
    enc = {k: _storage(v, dtype) for k, v in state.items() if not k.startswith(DECODER_PREFIX)}
    dec = {k[len(DECODER_PREFIX):]: _storage(v, dtype) for k, v in state.items() if k.startswith(DECODER_PREFIX)}
    n_dec = sum(p.numel() for n, p in backbone.named_parameters() if n.startswith(DECODER_PREFIX))
    n_all = sum(p.numel() for p in backbone.parameters())
    pretrained = getattr(backbone, "pretrained_cfg", None)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
        files = {BACKBONE_FILE: enc} | ({DECODER_FILE: dec} if dec else {})
        for name, tensors in files.items():
            save_file(tensors, str(tmp / name), metadata=meta)
            _fsync(tmp / name)
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "backbone": config.to_dict(),
            "num_params": {"total": n_all, "backbone": n_all - n_dec, "mae_decoder": n_dec},
            "dtype": "float16" if dtype == torch.float16 else "float32",
            "files": {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in files},
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "software": _software(),
            "pretrained_cfg": pretrained.to_dict() if pretrained is not None else None,
            **card,
        }
        (tmp / CARD_NAME).write_text(json.dumps(full, indent=2, default=str) + "\n")
        _fsync(tmp / CARD_NAME)
        _commit(tmp, folder, list(files) + [CARD_NAME])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _commit(tmp: Path, folder: Path, names: list[str]) -> None:
    """New folder: one atomic rename. Existing model folder: replace the files one by one, card last (its
    checksums expose a reader that raced the update), keeping everything else (heads/, banks/)."""
    if not folder.exists():
        os.replace(tmp, folder)
    else:
        stale = folder / DECODER_FILE
        for name in names:
            if name != CARD_NAME:
                os.replace(tmp / name, folder / name)
        os.replace(tmp / CARD_NAME, folder / CARD_NAME)
        if DECODER_FILE not in names:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        shutil.rmtree(tmp, ignore_errors=True)
    fd = os.open(folder.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _load_file(folder: Path, name: str, card: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / name
    if not path.is_file():
        raise WeightFormatError(f"{folder}: the model card lists {name} but the file is missing", path=str(folder),
                                looks_like="OrthoFM folder")
    expected = (card.get("files") or {}).get(name, {})
    if expected.get("bytes") is not None and path.stat().st_size != expected["bytes"]:
        raise WeightFormatError(
            f"{path}: {path.stat().st_size} bytes, the model card says {expected['bytes']} (truncated or replaced)",
            path=str(folder), looks_like="OrthoFM folder",
        )
    if expected.get("sha256") and _sha256(path) != expected["sha256"]:
        raise WeightFormatError(f"{path}: checksum differs from the model card (file corrupt or replaced)",
                                path=str(folder), looks_like="OrthoFM folder")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightFormatError(f"{path}: damaged safetensors file ({exc})", path=str(folder),
                                looks_like="OrthoFM folder") from exc


def load_orthofm(folder: str | os.PathLike[str], arch: str | None = None) -> Backbone:
    """Rebuild the backbone from its card and load the weights strictly (as float32)."""
    folder = Path(folder)
    card = read_model_card(folder)
    try:
        config = BackboneConfig.from_dict(card["backbone"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightFormatError(f"{folder}: invalid backbone config in the model card ({exc})", path=str(folder),
                                looks_like="OrthoFM folder") from exc
    if arch is not None and arch != config.arch:
        raise WeightFormatError(f"{folder}: the model card says arch {config.arch!r}, not {arch!r}",
                                path=str(folder), looks_like="OrthoFM folder")
    backbone = backbone_from_config(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in _load_file(folder, BACKBONE_FILE, card).items()}
    has_decoder = any(k.startswith(DECODER_PREFIX) for k in backbone.state_dict())
    if (folder / DECODER_FILE).is_file() or DECODER_FILE in (card.get("files") or {}):
        dec = _load_file(folder, DECODER_FILE, card)
        state.update({DECODER_PREFIX + k: v.float() if v.is_floating_point() else v for k, v in dec.items()})
    elif has_decoder:
        raise WeightFormatError(f"{folder}: the config has an MAE decoder but {DECODER_FILE} is missing",
                                path=str(folder), looks_like="OrthoFM folder")
    strict_load(backbone, state, looks_like="OrthoFM folder", path=str(folder), arch=config.arch)
    pre = card.get("pretrained_cfg")
    backbone.pretrained_cfg = _restore_cfg(pre)
    backbone.model_card = card
    return backbone.eval()


def _restore_cfg(pre: dict[str, Any] | None):
    from dataclasses import fields

    from .pretrained import WeightsCfg

    base = get_weights_cfg("orthofm")
    if not isinstance(pre, dict):
        return base
    known = {f.name for f in fields(WeightsCfg)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in pre.items() if k in known}
    try:
        return WeightsCfg(**{**base.to_dict(), **values})
    except TypeError:
        return base
