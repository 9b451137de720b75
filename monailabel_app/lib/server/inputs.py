"""Uploaded and stored files checked before decoding: format by content, size from the header, then a bounded decode.

Order of checks (each a clear 4xx): empty or unknown format -> 415; dimensions from the header over the
megapixel/megavoxel limit -> 413 (nothing decoded); then a full decode by ``orthofm.io.read_image`` with the same
limit (truncated, NaN/inf, 4D, mixed series, undecodable transfer syntax -> 415). Temp files live in the server's
private temp folder and are removed by :func:`upload_scope` on every path.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ServerSettings
from .errors import InvalidParams, PayloadTooLarge, UnsupportedMedia
from .logs import register_dicom_identifiers

log = logging.getLogger("orthofm.inputs")

PNG_SIG = b"\x89PNG\r\n\x1a\n"
MAX_SERIES_FILES = 4000
MAX_ZIP_RATIO = 200  # compressed -> uncompressed; larger is a zip bomb, not DICOM
_PATH_RE = re.compile(r"(/[^\s:'\"]+)+")
EXT_BY_KIND = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm", "nifti": ".nii", "nifti_gz": ".nii.gz",
               "nrrd": ".nrrd", "seg_nrrd": ".seg.nrrd", "json": ".json"}


@dataclass
class Probe:
    """What a file is, judged from its bytes and header only."""

    kind: str
    shape: tuple[int, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ext(self) -> str:
        return EXT_BY_KIND.get(self.kind, "")


def public_message(text: str, *paths: str | os.PathLike) -> str:
    """An error message without server paths (temp folders, studies folder)."""
    for p in sorted((str(p) for p in paths if p), key=len, reverse=True):
        text = text.replace(p, "<input>")
    return _PATH_RE.sub(lambda m: "<path>/" + os.path.basename(m.group(0)), text)


# -- temp files -------------------------------------------------------------------------------------
@contextlib.contextmanager
def upload_scope() -> Iterator[Path]:
    """A private temp folder for one request; removed on success, failure and cancellation alike."""
    folder = Path(tempfile.mkdtemp(prefix="req-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save_stream(fileobj: Any, dest: Path, max_bytes: int) -> int:
    """Copy an upload stream to ``dest`` with a hard byte limit (the multipart parser already spooled it)."""
    total = 0
    with open(dest, "wb") as out:
        while True:
            chunk = fileobj.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise PayloadTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
            out.write(chunk)
    if total == 0:
        raise UnsupportedMedia("empty file: not an image")
    return total


# -- probing --------------------------------------------------------------------------------------
def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 9 for b in head)


def probe_file(path: Path) -> Probe:
    """Classify a single file by content; raises 415 when it is no image format we take."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if not head:
        raise UnsupportedMedia("empty file: not an image")
    if len(head) >= 132 and head[128:132] == b"DICM":
        return _probe_dicom(path)
    if head.startswith(PNG_SIG):
        return _probe_png(head)
    if head.startswith(b"\xff\xd8\xff"):
        return _probe_jpeg(path)
    if head.startswith(b"NRRD000"):
        return _probe_nrrd(path)
    if head.startswith(b"\x1f\x8b"):
        return _probe_nifti(path, gz=True)
    if len(head) >= 4 and struct.unpack("<i", head[:4])[0] in (348, 540) or struct.unpack(">i", head[:4])[0] in (
            348, 540):
        return _probe_nifti(path, gz=False)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return Probe("zip")
    if head.lstrip().startswith(b"{"):
        return Probe("json")
    if _looks_like_text(head):
        raise UnsupportedMedia("not an image: the file is text")
    return _probe_dicom_without_preamble(path)


def _probe_png(head: bytes) -> Probe:
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise UnsupportedMedia("truncated or corrupt PNG: no IHDR header")
    width, height = struct.unpack(">II", head[16:24])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(head[25], 0)
    return Probe("png", (height, width), {"channels": channels, "bit_depth": head[24]})


def _probe_jpeg(path: Path) -> Probe:
    from orthofm.io.raster import jpeg_size

    size = jpeg_size(path)
    if size is None:
        raise UnsupportedMedia("truncated or corrupt JPEG: no frame header")
    return Probe("jpeg", tuple(size))


def _dicom_probe(ds: Any) -> Probe:
    from orthofm.io import ImageReadError
    from orthofm.io.dicom import check_header, n_frames

    register_dicom_identifiers(ds)
    try:
        check_header(ds, "DICOM", None)  # pixel data present, Rows/Columns, a decoder for the transfer syntax
    except ImageReadError as exc:
        raise UnsupportedMedia(public_message(str(exc))) from None
    frames = n_frames(ds)
    shape = (frames, int(ds.Rows), int(ds.Columns)) if frames > 1 else (int(ds.Rows), int(ds.Columns))
    return Probe("dicom", shape, {"series": str(ds.get("SeriesInstanceUID", "")),
                                  "modality": str(ds.get("Modality", "")),
                                  "samples": int(ds.get("SamplesPerPixel", 1) or 1)})


def _probe_dicom(path: Path) -> Probe:
    from orthofm.io import ImageReadError
    from orthofm.io.dicom import read_header

    try:
        ds = read_header(path)
    except ImageReadError as exc:
        raise UnsupportedMedia(public_message(str(exc), path)) from None
    return _dicom_probe(ds)


def _probe_dicom_without_preamble(path: Path) -> Probe:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), force=True, stop_before_pixels=False, defer_size="256 KB")
        if "Rows" in ds or "PixelData" in ds:
            return _dicom_probe(ds)
    except Exception as exc:  # noqa: BLE001 - anything unparsable here is simply "not an image"
        log.debug("not DICOM either: %s", type(exc).__name__)
    raise UnsupportedMedia("not an image: unrecognised format (expected DICOM, PNG, JPEG, NIfTI or NRRD)")


def _probe_nrrd(path: Path) -> Probe:
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception as exc:  # noqa: BLE001 - pynrrd raises many types for garbage headers
        raise UnsupportedMedia(public_message(f"unreadable NRRD header ({exc})", path)) from None
    sizes = tuple(int(s) for s in header.get("sizes", ()))
    kind = "seg_nrrd" if any(k.startswith("Segment0_") for k in header) else "nrrd"
    return Probe(kind, sizes, {"kinds": [str(k) for k in header.get("kinds", [])]})


def _probe_nifti(path: Path, gz: bool) -> Probe:
    import nibabel as nib

    # nibabel picks the format from the name: give it one without copying the data
    link = path.with_name(path.name + (".nii.gz" if gz else ".nii"))
    try:
        os.link(path, link)
    except OSError:
        shutil.copyfile(path, link)
    try:
        if gz:
            with gzip.open(link, "rb") as fh:
                head = fh.read(4)
            if len(head) < 4 or struct.unpack("<i", head)[0] not in (348, 540) and struct.unpack(
                    ">i", head)[0] not in (348, 540):
                raise UnsupportedMedia("not an image: gzip file that is not a NIfTI volume")
        img = nib.load(str(link))
        shape = tuple(int(s) for s in img.shape)
    except UnsupportedMedia:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for garbage headers
        raise UnsupportedMedia(public_message(f"unreadable NIfTI ({exc})", link, path)) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(link)
    return Probe("nifti_gz" if gz else "nifti", shape)


def spatial_shape(probe: Probe) -> tuple[int, ...]:
    """Header shape without trailing singleton axes (a 2D image stored as (H, W, 1) counts as 2D)."""
    shape = list(probe.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    return tuple(shape)


def check_dimensions(probe: Probe, settings: ServerSettings) -> None:
    """413 over the megapixel (2D) / megavoxel (3D) limit; 415 for 4D or degenerate shapes. No decoding."""
    shape = spatial_shape(probe)
    if not shape or any(s <= 0 for s in shape):
        raise UnsupportedMedia(f"zero or negative image dimensions {probe.shape} in the header")
    if len(shape) > 3 and probe.kind != "seg_nrrd":
        raise UnsupportedMedia(f"not a 2D or 3D image: {len(shape)}D data of shape {probe.shape}")
    total = int(np.prod(shape, dtype=np.int64))
    limit = settings.max_pixels_2d if len(shape) == 2 else settings.max_voxels_3d
    if total > limit:
        unit = "megapixels" if len(shape) == 2 else "megavoxels"
        raise PayloadTooLarge(
            f"image of {'x'.join(str(s) for s in shape)} = {total / 1e6:.1f} {unit} exceeds the limit of "
            f"{limit / 1e6:g} {unit} (server setting max_{unit})"
        )


# -- decoding -------------------------------------------------------------------------------------
def decode(path: Path, settings: ServerSettings, *hide: str | os.PathLike) -> Any:
    """Full decode through ``orthofm.io`` with the size limit; every reader failure is a 415."""
    import warnings

    from orthofm.io import ImageReadError, SpacingUnknownWarning, read_image

    limit = max(settings.max_pixels_2d, settings.max_voxels_3d)
    try:
        with warnings.catch_warnings():  # a PNG without spacing is normal here; results say spacing_known
            warnings.simplefilter("ignore", SpacingUnknownWarning)
            record = read_image(path, max_pixels=limit)
    except ImageReadError as exc:
        raise UnsupportedMedia(public_message(str(exc), path, *hide)) from None
    except MemoryError:
        raise PayloadTooLarge("image too large to decode") from None
    except (OSError, ValueError, EOFError, SyntaxError, TypeError, KeyError, IndexError, struct.error,
            zipfile.BadZipFile, RuntimeError) as exc:
        # third-party decoders (PIL, zlib, pydicom handlers, ITK) raise all of these for corrupt data
        raise UnsupportedMedia(public_message(f"could not decode the image ({type(exc).__name__}: {exc})",
                                              path, *hide)) from None
    arr = record.array
    if arr.ndim not in (2, 3):
        raise UnsupportedMedia(f"not a 2D or 3D image: decoded {arr.ndim}D data")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise UnsupportedMedia("image contains non-finite values (NaN or inf)")
    if arr.size == 0:
        raise UnsupportedMedia("image has no pixels")
    return record


def check_image_file(path: Path, settings: ServerSettings) -> Probe:
    """Probe + dimension limits for a file already on the server (datastore images too)."""
    if path.is_dir():
        return probe_series(path, settings)
    probe = probe_file(path)
    if probe.kind in ("zip", "json"):
        raise UnsupportedMedia(f"not an image: a {probe.kind} file")
    check_dimensions(probe, settings)
    return probe


# -- DICOM series in a zip ------------------------------------------------------------------------------
def extract_series_zip(zip_path: Path, dest: Path, settings: ServerSettings) -> Path:
    """Unpack a zip of one DICOM series, flattening names; bounded count, size and compression ratio."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedMedia(f"not a readable zip archive ({exc})") from None
    dest.mkdir(parents=True, exist_ok=True)
    budget = max(settings.max_upload_bytes * 4, settings.max_voxels_3d * 4)
    written = 0
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and not _junk(m.filename)]
        if not members:
            raise UnsupportedMedia("zip archive holds no files: expected the DICOM files of one series")
        if len(members) > MAX_SERIES_FILES:
            raise PayloadTooLarge(f"zip holds {len(members)} files; at most {MAX_SERIES_FILES} per series")
        for i, m in enumerate(members):
            if m.compress_size and m.file_size / max(m.compress_size, 1) > MAX_ZIP_RATIO:
                raise PayloadTooLarge("zip member compresses more than 200:1 (a zip bomb, not DICOM)")
            out = dest / f"{i:05d}.dcm"
            try:
                with zf.open(m) as src, open(out, "wb") as fh:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > budget:
                            raise PayloadTooLarge(f"zip expands beyond {budget} bytes")
                        fh.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
                raise UnsupportedMedia(f"corrupt zip member ({type(exc).__name__}: {exc})") from None
    return dest


def _junk(name: str) -> bool:
    base = os.path.basename(name)
    return not base or base.startswith(".") or "__MACOSX" in name or base.lower() in ("dicomdir", "thumbs.db")


def probe_series(folder: Path, settings: ServerSettings) -> Probe:
    """Every file DICOM with pixels, one series, one matrix; 3D size from the headers."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UnsupportedMedia("empty series: no DICOM files")
    if len(files) > MAX_SERIES_FILES:
        raise PayloadTooLarge(f"series of {len(files)} files; at most {MAX_SERIES_FILES}")
    series, matrix = set(), set()
    frames = 0
    for i, p in enumerate(files):
        try:
            probe = probe_file(p)
        except UnsupportedMedia as exc:
            raise UnsupportedMedia(f"series member {i + 1} is not DICOM: {exc.message}") from None
        if probe.kind != "dicom":
            raise UnsupportedMedia(f"series member {p.name} is not DICOM ({probe.kind})")
        series.add(probe.notes.get("series", ""))
        matrix.add(probe.shape[-2:])
        frames += probe.shape[0] if len(probe.shape) == 3 else 1
    if len(series) > 1:
        raise UnsupportedMedia(f"mixed series: {len(series)} different SeriesInstanceUIDs in one upload")
    if len(matrix) > 1:
        raise UnsupportedMedia(f"inconsistent series: slices of different sizes {sorted(matrix)}")
    rows, cols = next(iter(matrix))
    probe = Probe("series", (frames, rows, cols) if frames > 1 else (rows, cols))
    check_dimensions(probe, settings)
    return probe


# -- uploads as a whole ---------------------------------------------------------------------------------
@dataclass
class CheckedImage:
    """A validated upload ready to store or infer on: a file with the right extension, or a series folder."""

    path: Path
    probe: Probe
    record: Any

    @property
    def ext(self) -> str:
        return "" if self.path.is_dir() else self.probe.ext


def check_upload(raw: Path, scope: Path, settings: ServerSettings, deidentify: bool = False) -> CheckedImage:
    """Validate an uploaded image (single file or zip of a DICOM series); raises 413/415 before decoding."""
    probe = probe_file(raw)
    if probe.kind == "json":
        raise UnsupportedMedia("not an image: a JSON document")
    if probe.kind == "zip":
        folder = extract_series_zip(raw, scope / "series", settings)
        probe = probe_series(folder, settings)
        if deidentify:
            from .deid import deidentify_folder

            deidentify_folder(folder)
        record = decode(folder, settings, scope)
        return CheckedImage(folder, probe, record)
    check_dimensions(probe, settings)
    path = raw.with_name("image" + probe.ext)
    os.replace(raw, path)
    if deidentify and probe.kind == "dicom":
        from .deid import deidentify_file

        deidentify_file(path)
    record = decode(path, settings, scope)
    return CheckedImage(path, probe, record)


def check_label_upload(raw: Path, image_path: str, settings: ServerSettings) -> tuple[Path, str]:
    """A label file: a JSON class label ``{"label": ...}`` or a label map matching the image's grid."""
    probe = probe_file(raw)
    if probe.kind == "json":
        obj = _json_label(raw)
        path = raw.with_name("label.json")
        os.replace(raw, path)
        return path, json.dumps(obj)
    if probe.kind not in ("nrrd", "seg_nrrd", "nifti", "nifti_gz", "png"):
        raise UnsupportedMedia(f"label must be NRRD, .seg.nrrd, NIfTI, PNG or a JSON class label; got {probe.kind}")
    check_dimensions(probe, settings)
    image_probe = check_image_file(Path(image_path), settings)
    want = _grid(spatial_shape(image_probe), image_probe.kind)
    got = _grid(spatial_shape(probe), probe.kind)
    if probe.kind == "seg_nrrd":
        got = tuple(s for s in got if s > 1)[-len([s for s in want if s > 1]):]
        want = tuple(s for s in want if s > 1)
    if sorted(got) != sorted(want):
        raise InvalidParams(f"label grid {got} does not match the image grid {want}")
    path = raw.with_name("label" + probe.ext)
    os.replace(raw, path)
    if probe.kind != "seg_nrrd":
        decode(path, settings)
    return path, ""


def _grid(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """Pixels per axis ignoring singleton axes (a 2D label may come as (1,H,W) or (W,H,1))."""
    return tuple(s for s in shape if s != 1)


def _json_label(path: Path) -> dict:
    from .validation import json_object

    text = path.read_bytes()
    obj = json_object(text, "class label")
    value = obj.get("label")
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidParams('a JSON class label needs "label": a class name or index, e.g. {"label": "KL2"}')
    if isinstance(value, str) and not (0 < len(value) <= 64):
        raise InvalidParams("class label name must be 1-64 characters")
    return obj
