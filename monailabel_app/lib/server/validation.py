"""Request validation in one place: ids, tags, names and params are checked before anything is read or written.

Every check raises an :class:`ApiError` subclass whose message names the problem (404 unknown id or name, 422 bad
parameter). The routes call these first; nothing below them sees an unchecked value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParams, NotFound

NEW_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TAG_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_PARAMS_BYTES = 64 * 1024
MAX_DEPTH = 8
RESULT_EXTENSIONS = (".nrrd", ".nii.gz", ".nii", ".seg.nrrd", ".json")
RESULT_DTYPES = ("float32", "float64", "uint8", "uint16", "int16", "int32", "uint32")


def _printable(value: str, limit: int = 80) -> str:
    """A value safe to echo in an error: control characters escaped, long values cut."""
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def _reject_pathlike(value: str, what: str) -> None:
    if not value:
        raise InvalidParams(f"{what} is empty")
    if len(value) > 256:
        raise InvalidParams(f"{what} is longer than 256 characters")
    if any(c in value for c in ("/", "\\", "\x00")) or value in (".", "..") or value.startswith("~"):
        raise NotFound(f"{what} is not a datastore id: paths are not accepted")  # no echo of the path
    if any(ord(c) < 32 for c in value):
        raise InvalidParams(f"{what} {_printable(value)!r} contains control characters")


def existing_image_id(datastore: Any, value: str | None, what: str = "image") -> str:
    """An id the datastore knows; paths (absolute, relative, URL-encoded) are refused before any lookup."""
    value = value or ""
    _reject_pathlike(value, what)
    if value not in set(datastore.list_images()):
        raise NotFound(f"{what} {_printable(value)!r} is not in the datastore")
    return value


def new_image_id(value: str) -> str:
    if not NEW_ID_RE.match(value or "") or ".." in value:
        raise InvalidParams(
            f"image id {_printable(value or '')!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def label_tag(value: str | None) -> str:
    value = value or "final"
    if not TAG_RE.match(value):
        raise InvalidParams(
            f"label tag {_printable(value)!r} is not allowed: use 1-32 lower-case letters, digits, '_' or '-', "
            "starting with a letter (e.g. final, original, cls)"
        )
    return value


def known_name(value: str, known: Iterable[str], what: str) -> str:
    names = sorted(known)
    if not NAME_RE.match(value or "") or value not in names:
        raise NotFound(f"unknown {what} {_printable(value or '')!r}; available: {names}")
    return value


def _depth(obj: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max([_depth(v, level + 1) for v in obj.values()] or [level + 1])
    if isinstance(obj, list):
        return max([_depth(v, level + 1) for v in obj] or [level + 1])
    return level


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not valid JSON")


def json_object(text: str | bytes | None, what: str = "params") -> dict[str, Any]:
    """Parse a JSON object (<= 64 KB, depth <= 8, no NaN/Infinity); '' means {}."""
    if text is None or (isinstance(text, (str, bytes)) and not text.strip()):
        return {}
    if len(text) > MAX_PARAMS_BYTES:
        raise InvalidParams(f"{what} is larger than {MAX_PARAMS_BYTES} bytes")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidParams(f"{what} is not valid JSON: {exc}") from None
    return checked_object(obj, what)


def checked_object(obj: Any, what: str = "params") -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidParams(f"{what} must be a JSON object, got {type(obj).__name__}")
    if _depth(obj) > MAX_DEPTH:
        raise InvalidParams(f"{what} is nested deeper than {MAX_DEPTH} levels")
    if len(json.dumps(obj)) > MAX_PARAMS_BYTES:
        raise InvalidParams(f"{what} is larger than {MAX_PARAMS_BYTES} bytes")
    return obj


@dataclass(frozen=True)
class Param:
    """One accepted parameter: its type, and optionally allowed choices or a numeric range."""

    kind: type | tuple[type, ...]
    choices: tuple[Any, ...] | None = None
    lo: float | None = None
    hi: float | None = None
    max_len: int = 256

    def check(self, key: str, value: Any) -> Any:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if bool not in kinds and isinstance(value, bool):
            raise InvalidParams(f"parameter {key!r}: expected {_kind_names(kinds)}, got a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise InvalidParams(f"parameter {key!r}: expected {_kind_names(kinds)}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidParams(f"parameter {key!r}: must be finite")
        if self.choices is not None and value not in self.choices:
            raise InvalidParams(f"parameter {key!r}: {_printable(str(value))!r} is not one of {list(self.choices)}")
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and ((self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi)):
            raise InvalidParams(f"parameter {key!r}: {value} is outside [{self.lo}, {self.hi}]")
        if isinstance(value, str) and len(value) > self.max_len:
            raise InvalidParams(f"parameter {key!r}: longer than {self.max_len} characters")
        return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)


# Keys MONAI Label clients (its Slicer plugin, its Python client, OrthoFM's extension) send with /infer.
INFER_COMMON: dict[str, Param] = {
    "client_id": Param((str, type(None))),
    "result_extension": Param(str, choices=RESULT_EXTENSIONS),
    "result_dtype": Param(str, choices=RESULT_DTYPES),
    "result_compress": Param(bool),
    "label_info": Param(list),
    "label_names": Param((dict, list)),
    "timeout": Param((int, float), lo=1, hi=3600),
    "save_label": Param(bool),
    "label_tag": Param(str),
}


def params_from_config(config: Mapping[str, Any]) -> dict[str, Param]:
    """A task's ``config()`` (what /info shows and Slicer edits) as accepted parameters.

    A list default means "one of these" (MONAI Label's convention for a drop-down)."""
    out: dict[str, Param] = {}
    for key, default in (config or {}).items():
        if isinstance(default, bool):
            out[key] = Param(bool)
        elif isinstance(default, (int, float)):
            out[key] = Param((int, float))
        elif isinstance(default, list):
            out[key] = Param((str, int, float), choices=tuple(default))
        elif isinstance(default, str):
            out[key] = Param(str)
        elif isinstance(default, dict):
            out[key] = Param(dict)
    return out


def check_params(params: dict[str, Any], accepted: Mapping[str, Param], where: str) -> dict[str, Any]:
    """Every key known and well-typed; unknown keys are an error (they would silently do nothing)."""
    out = {}
    for key, value in params.items():
        spec = accepted.get(key)
        if spec is None:
            raise InvalidParams(f"unknown parameter {_printable(str(key))!r} for {where}; accepted: {sorted(accepted)}")
        out[key] = spec.check(key, value)
    if "label_tag" in out:
        out["label_tag"] = label_tag(out["label_tag"])
    return out
