"""A small NRRD reader and writer (attached data; raw, gzip or bzip2).

Slicer's Python ships NumPy but not pynrrd, and the server's results (heatmaps, label maps,
``.seg.nrrd``) and our uploads are all NRRD, so the extension reads and writes them itself. Only what
MONAI Label, ITK and Slicer produce is supported; anything else raises ``OrthoFMFormatError``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import OrthoFMFormatError
from .geometry import Geometry

_TYPES: dict[str, str] = {}
for _np, _names in {
    "i1": ("signed char", "int8", "int8_t"),
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
           "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}.items():
    for _name in _names:
        _TYPES[_name] = _np

_WRITE_TYPES = {"i1": "int8", "u1": "uint8", "i2": "int16", "u2": "uint16", "i4": "int32", "u4": "uint32",
                "i8": "int64", "u8": "uint64", "f4": "float", "f8": "double"}

_VECTOR = re.compile(r"\(([^)]*)\)|none", re.IGNORECASE)


@dataclass
class NrrdImage:
    """Pixels in ``(K, J, I)`` order (``(K, J, I, C)`` when there is a non-spatial axis) plus header."""

    array: np.ndarray
    geometry: Geometry
    fields: dict[str, str] = field(default_factory=dict)
    key_values: dict[str, str] = field(default_factory=dict)
    was_2d: bool = False

    @property
    def has_list_axis(self) -> bool:
        return self.array.ndim == 4


# --------------------------------------------------------------------------------------------- reading
def read_nrrd(data: bytes, *, source: str = "NRRD data") -> NrrdImage:
    """Parse a whole NRRD file held in memory."""
    if not data.startswith(b"NRRD000"):
        raise OrthoFMFormatError(f"{source} is not a NRRD file (it does not start with 'NRRD000').")
    end = data.find(b"\n\n")
    end_crlf = data.find(b"\r\n\r\n")
    if end < 0 and end_crlf < 0:
        raise OrthoFMFormatError(f"{source}: NRRD header has no blank line before the data (detached data?).")
    if end_crlf >= 0 and (end < 0 or end_crlf < end):
        header_text, payload = data[:end_crlf].decode("latin-1"), data[end_crlf + 4:]
    else:
        header_text, payload = data[:end].decode("latin-1"), data[end + 2:]
    fields, key_values = _parse_header(header_text.splitlines()[1:], source)
    array = _decode_payload(fields, payload, source)
    return _to_image(array, fields, key_values, source)


def read_nrrd_file(path: str) -> NrrdImage:
    with open(path, "rb") as f:
        return read_nrrd(f.read(), source=str(path))


def _parse_header(lines: list[str], source: str) -> tuple[dict[str, str], dict[str, str]]:
    fields: dict[str, str] = {}
    key_values: dict[str, str] = {}
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            key_values[key] = value
        elif ": " in line or line.rstrip().endswith(":"):
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        else:
            raise OrthoFMFormatError(f"{source}: cannot read NRRD header line {line!r}.")
    for required in ("type", "dimension", "sizes", "encoding"):
        if required not in fields:
            raise OrthoFMFormatError(f"{source}: NRRD header lacks the required field '{required}'.")
    if "data file" in fields or "datafile" in fields:
        raise OrthoFMFormatError(f"{source}: detached NRRD data files are not supported; send a .nrrd with "
                                 "attached data.")
    return fields, key_values


def _decode_payload(fields: dict[str, str], payload: bytes, source: str) -> np.ndarray:
    type_name = fields["type"].lower()
    if type_name not in _TYPES:
        raise OrthoFMFormatError(f"{source}: unsupported NRRD pixel type '{fields['type']}'.")
    sizes = [int(s) for s in fields["sizes"].split()]
    if len(sizes) != int(fields["dimension"]):
        raise OrthoFMFormatError(f"{source}: NRRD 'sizes' has {len(sizes)} entries but dimension is "
                                 f"{fields['dimension']}.")
    code = _TYPES[type_name]
    endian = "<" if fields.get("endian", "little").lower() == "little" else ">"
    dtype = np.dtype(code if code.endswith("1") else endian + code)
    encoding = fields["encoding"].lower()
    try:
        if encoding in ("gzip", "gz"):
            raw = gzip.decompress(payload)
        elif encoding in ("bzip2", "bz2"):
            raw = bz2.decompress(payload)
        elif encoding == "raw":
            raw = payload
        elif encoding in ("ascii", "text", "txt"):
            values = np.array(payload.decode("ascii").split(), dtype=np.float64)
            raw = values.astype(dtype).tobytes()
        else:
            raise OrthoFMFormatError(f"{source}: unsupported NRRD encoding '{fields['encoding']}'.")
    except (OSError, EOFError, ValueError) as exc:
        raise OrthoFMFormatError(f"{source}: NRRD data could not be decompressed ({exc}).") from exc
    count = int(np.prod(sizes))
    needed = count * dtype.itemsize
    skip = int(fields.get("byte skip", "0"))
    if skip == -1:
        raw = raw[len(raw) - needed:]
    elif skip > 0:
        raw = raw[skip:]
    if len(raw) < needed:
        raise OrthoFMFormatError(f"{source}: NRRD data is truncated ({len(raw)} of {needed} bytes).")
    array = np.frombuffer(raw[:needed], dtype=dtype).reshape(sizes[::-1])
    return array.astype(dtype.newbyteorder("="), copy=True)


def _parse_vectors(text: str, source: str) -> list[list[float] | None]:
    vectors: list[list[float] | None] = []
    for match in _VECTOR.finditer(text):
        if match.group(1) is None:
            vectors.append(None)
        else:
            try:
                vectors.append([float(x) for x in match.group(1).split(",")])
            except ValueError as exc:
                raise OrthoFMFormatError(f"{source}: cannot read NRRD vector '{match.group(0)}'.") from exc
    return vectors


def _to_image(array: np.ndarray, fields: dict[str, str], key_values: dict[str, str], source: str) -> NrrdImage:
    ndim = array.ndim
    directions = _parse_vectors(fields.get("space directions", ""), source) if "space directions" in fields \
        else [None] * ndim
    if len(directions) != ndim:
        raise OrthoFMFormatError(f"{source}: 'space directions' lists {len(directions)} axes, data has {ndim}.")
    kinds = fields.get("kinds", "").split()
    spatial = [n for n, d in enumerate(directions) if d is not None]
    if not spatial:  # no space information: use 'spacings' (or 1) along an axis-aligned RAS grid
        spacings = [float(s) for s in fields.get("spacings", "").split()] or [1.0] * ndim
        spatial = [n for n in range(ndim) if not (kinds and kinds[n].lower() in ("list", "vector", "rgb-color",
                                                                                 "rgba-color", "complex"))]
        spatial = spatial[:3]
        spacing = [abs(spacings[n]) if n < len(spacings) and np.isfinite(spacings[n]) else 1.0 for n in spatial]
        vectors = [[spacing[m] if k == m else 0.0 for k in range(len(spatial))] for m in range(len(spatial))]
        space = "left-posterior-superior"
        origin = None
    else:
        vectors = [directions[n] for n in spatial]  # type: ignore[misc]
        space = fields.get("space", "left-posterior-superior")
        origin = _parse_vectors(fields["space origin"], source)[0] if "space origin" in fields else None
        if "space" not in fields and "space dimension" in fields:
            space = "left-posterior-superior"
    was_2d = len(spatial) == 2
    if len(spatial) == 2:  # a 2-D image: make it a single-slice volume, as Slicer does
        vectors = [list(v) + [0.0] if len(v) == 2 else list(v) for v in vectors]
        normal = np.cross(vectors[0], vectors[1])
        norm = np.linalg.norm(normal)
        vectors.append(list(normal / norm) if norm > 0 else [0.0, 0.0, 1.0])
        if origin is not None and len(origin) == 2:
            origin = list(origin) + [0.0]
        array = array[np.newaxis, ...]  # the new slowest NRRD axis is NumPy axis 0
        spatial = spatial + [ndim]
        ndim += 1
    if len(spatial) != 3 or ndim - len(spatial) > 1:
        raise OrthoFMFormatError(f"{source}: expected a 3-D image with at most one non-spatial axis, got "
                                 f"{ndim} axes with {len(spatial)} spatial.")
    geometry = Geometry.from_space_directions(space, vectors, origin)
    # NumPy axes are the NRRD axes reversed; put spatial axes as (K, J, I) and the list axis last.
    numpy_spatial = [ndim - 1 - n for n in spatial][::-1]
    numpy_other = [a for a in range(ndim) if a not in numpy_spatial]
    array = np.ascontiguousarray(np.transpose(array, numpy_spatial + numpy_other))
    return NrrdImage(array=array, geometry=geometry, fields=fields, key_values=key_values, was_2d=was_2d)


# --------------------------------------------------------------------------------------------- writing
def write_nrrd(array: np.ndarray, geometry: Geometry, *, encoding: str = "gzip",
               key_values: dict[str, str] | None = None, compress_level: int = 1) -> bytes:
    """Encode a ``(K, J, I)`` (or ``(K, J, I, C)``) array with its geometry as NRRD bytes (LPS space)."""
    a = np.asarray(array)
    if a.ndim not in (3, 4):
        raise ValueError(f"write_nrrd needs a (K, J, I) or (K, J, I, C) array, got shape {a.shape}; "
                         "a 2-D image is a (1, H, W) single-slice volume")
    code = a.dtype.str[1:]
    if code not in _WRITE_TYPES:
        if a.dtype == np.bool_:
            a, code = a.astype(np.uint8), "u1"
        else:
            raise ValueError(f"NRRD cannot store pixel type {a.dtype}")
    space = geometry.nrrd_space_fields()
    sizes = list(a.shape[::-1])
    if a.ndim == 4:  # list axis first in the file
        directions = "none " + space["space directions"]
        kinds = "list domain domain domain"
    else:
        directions = space["space directions"]
        kinds = "domain domain domain"
    lines = ["NRRD0004", "# Written by OrthoFM Slicer extension",
             f"type: {_WRITE_TYPES[code]}", f"dimension: {a.ndim}", f"space: {space['space']}",
             "sizes: " + " ".join(str(s) for s in sizes), f"space directions: {directions}",
             f"kinds: {kinds}", "endian: little", f"encoding: {encoding}",
             f"space origin: {space['space origin']}"]
    for key, value in (key_values or {}).items():
        if "\n" in key or "\n" in str(value) or ":=" in key:
            raise ValueError(f"NRRD key/value pair {key!r} contains a newline or ':='")
        lines.append(f"{key}:={value}")
    raw = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False)).tobytes()
    if encoding in ("gzip", "gz"):
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=compress_level, mtime=0) as gz:
            gz.write(raw)
        raw = buf.getvalue()
    elif encoding != "raw":
        raise ValueError(f"Unsupported NRRD encoding for writing: {encoding}")
    return ("\n".join(lines) + "\n\n").encode("latin-1") + raw
