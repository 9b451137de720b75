"""/datastore routes (same paths and fields as MONAI Label's), every input checked before anything is written.

Uploads go to a per-request private temp folder, are checked by content (format, header size, bounded decode),
optionally de-identified, and only then stored by the crash-consistent datastore. Labels must be a JSON class
label or a label map on the image's grid. The temp folder is removed on every path.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response

from .errors import Conflict, InvalidParams, NotFound
from .inputs import check_label_upload, check_upload, save_stream, upload_scope
from .validation import existing_image_id, json_object, label_tag, new_image_id

log = logging.getLogger("orthofm.server.datastore")
router = APIRouter(prefix="/datastore", tags=["Datastore"])
RESERVED_INFO = ("name", "path", "ts")


def _ds(request: Request) -> Any:
    return request.app.state.instance.datastore()


def _settings(request: Request) -> Any:
    return request.app.state.settings


@router.get("/")
def datastore(request: Request, output: str | None = None) -> Any:
    d = _ds(request)
    if output in (None, "stats"):
        return d.status()
    if output == "all":
        return d.json()
    if output == "train":
        return d.datalist()
    raise InvalidParams("output must be one of ['stats', 'all', 'train']")


_STEM_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _id_from_filename(filename: str | None) -> str:
    base = os.path.basename(filename or "")
    for ext in (".nii.gz", ".seg.nrrd", ".zip", ".dcm", ".png", ".jpg", ".jpeg", ".nii", ".nrrd"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return _STEM_SAFE.sub("_", base).strip("._-")[:128]


@router.put("/image")
@router.put("/", include_in_schema=False)
def add_image(request: Request, file: Annotated[UploadFile, File()], image: str | None = None,
              params: Annotated[str, Form()] = "{}") -> dict:
    settings, d = _settings(request), _ds(request)
    info = json_object(params)
    for key in RESERVED_INFO:
        info.pop(key, None)
    image_id = new_image_id(image or _id_from_filename(file.filename))
    if image_id in set(d.list_images()):
        raise Conflict(f"image {image_id!r} already exists; choose another id or delete it first")
    with upload_scope() as scope:
        raw = scope / "upload"
        save_stream(file.file, raw, settings.max_upload_bytes)
        checked = check_upload(raw, scope, settings, deidentify=settings.deidentify)
        try:
            stored = d.add_image(image_id, str(checked.path), info)
        except FileExistsError as exc:
            raise Conflict(str(exc)) from None
    request.app.state.instance.on_new_image(stored)
    return {"image": stored}


@router.delete("/image")
@router.delete("/", include_in_schema=False)
def remove_image(request: Request, id: str) -> dict:
    d = _ds(request)
    d.remove_image(existing_image_id(d, id))
    return {}


def _series_zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                zf.write(p, arcname=p.name)
    return buf.getvalue()


@router.head("/image")
@router.get("/image")
def download_image(request: Request, image: str) -> Response:
    d = _ds(request)
    image = existing_image_id(d, image)
    uri = Path(d.get_image_uri(image))
    if uri.is_dir():
        return Response(_series_zip(uri), media_type="application/zip",
                        headers={"content-disposition": f'attachment; filename="{image}.zip"'})
    if not uri.is_file():
        raise NotFound(f"image {image!r} has no file")
    return FileResponse(uri, media_type="application/octet-stream", filename=uri.name)


@router.get("/image/info")
def get_image_info(request: Request, image: str) -> dict:
    d = _ds(request)
    info = dict(d.get_image_info(existing_image_id(d, image)))
    info.pop("path", None)  # server paths are not the client's business
    return info


@router.put("/image/info")
def put_image_info(request: Request, image: str, info: Annotated[str, Form()] = "{}") -> dict:
    d = _ds(request)
    image = existing_image_id(d, image)
    obj = json_object(info, "info")
    bad = [k for k in obj if k in RESERVED_INFO]
    if bad:
        raise InvalidParams(f"info keys {bad} are managed by the server")
    d.update_image_info(image, obj)
    return {}


@router.put("/label")
def save_label(request: Request, image: str, label: Annotated[UploadFile, File()], tag: str = "final",
               params: Annotated[str, Form()] = "{}") -> dict:
    settings, d = _settings(request), _ds(request)
    image = existing_image_id(d, image)
    tag = label_tag(tag)
    info = json_object(params)
    for key in RESERVED_INFO:
        info.pop(key, None)
    with upload_scope() as scope:
        raw = scope / "upload"
        save_stream(label.file, raw, settings.max_upload_bytes)
        path, _ = check_label_upload(raw, d.get_image_uri(image), settings)
        label_id = d.save_label(image, str(path), tag, info)
    res = request.app.state.instance.on_save_label(image, label_id) or {}
    res.update({"image": image, "label": label_id})
    return res


@router.delete("/label")
def remove_label(request: Request, id: str, tag: str) -> dict:
    d = _ds(request)
    image = existing_image_id(d, id, "label")
    tag = label_tag(tag)
    if not d.get_label_by_image_id(image, tag):
        raise NotFound(f"image {image!r} has no label with tag {tag!r}")
    d.remove_label(image, tag)
    return {}


@router.head("/label")
@router.get("/label")
def download_label(request: Request, tag: str, label: str = "", image: str = "") -> Response:
    d = _ds(request)
    image_id = existing_image_id(d, label or image, "label")
    tag = label_tag(tag)
    uri = d.get_label_uri(image_id, tag) if d.get_label_by_image_id(image_id, tag) else ""
    if not uri or not os.path.isfile(uri):
        raise NotFound(f"image {image_id!r} has no label with tag {tag!r}")
    return FileResponse(uri, media_type="application/octet-stream", filename=os.path.basename(uri))


@router.get("/label/info")
def get_label_info(request: Request, label: str, tag: str) -> dict:
    d = _ds(request)
    image = existing_image_id(d, label, "label")
    tag = label_tag(tag)
    if not d.get_label_by_image_id(image, tag):
        raise NotFound(f"image {image!r} has no label with tag {tag!r}")
    return d.get_label_info(image, tag)


@router.put("/label/info")
def put_label_info(request: Request, label: str, tag: str, info: Annotated[str, Form()] = "{}") -> dict:
    d = _ds(request)
    image = existing_image_id(d, label, "label")
    tag = label_tag(tag)
    if not d.get_label_by_image_id(image, tag):
        raise NotFound(f"image {image!r} has no label with tag {tag!r}")
    obj = json_object(info, "info")
    for key in RESERVED_INFO:
        obj.pop(key, None)
    d.update_label_info(image, tag, obj)
    return {}
