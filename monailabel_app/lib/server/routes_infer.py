"""POST /infer/{model}: validated, run in the inference pool (never on the event loop), temp files always removed.

The answer's ``Server-Timing`` header splits the server's time into parse (body read), queue (waiting for an
inference thread), handler (``run_infer``, the in-process call) and encode (response body).

Wire-compatible with MONAI Label clients: a result file comes back as ``multipart/form-data`` with a ``params``
JSON part and an ``image`` file part (``output=image`` -> the file only, ``output=json`` -> JSON only); a result
without a file is plain JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from requests_toolbelt import MultipartEncoder

from .errors import InvalidParams
from .inputs import check_image_file, check_upload, save_stream, upload_scope
from .validation import (
    INFER_COMMON,
    check_params,
    existing_image_id,
    json_object,
    known_name,
    params_from_config,
)

log = logging.getLogger("orthofm.server.infer")
router = APIRouter(tags=["Infer"])
OUTPUTS = ("image", "json", "all")
MIME = {".nrrd": "application/octet-stream", ".nii.gz": "application/gzip", ".json": "application/json"}


def run_infer(instance: Any, settings: Any, model: str, image: str, params: dict[str, Any],
              upload: UploadFile | None, request_id: str) -> tuple[dict, bytes | None, str | None]:
    """The whole request in a pool thread: check input, run the task, read the result, clean up."""
    ds = instance.datastore()
    task = instance._infers[model]
    with upload_scope() as scope:
        record = None
        image_id = None
        if upload is not None:
            raw = scope / "upload"
            save_stream(upload.file, raw, settings.max_upload_bytes)
            checked = check_upload(raw, scope, settings, deidentify=settings.deidentify)
            path, record = checked.path, checked.record
        else:
            image_id = existing_image_id(ds, image)
            path = Path(ds.get_image_uri(image_id))
            check_image_file(path, settings)  # header-only: 413 before the task decodes anything
        request = {**params, "model": model, "image": str(path), "image_id": image_id,
                   "image_record": record, "request_id": request_id, "result_dir": str(scope)}
        result_file, result_json = task(request)
        result_json = dict(result_json or {})
        data = name = None
        if result_file:
            rf = Path(result_file)
            if params.get("save_label") and image_id is not None:
                tag = params.get("label_tag") or "original"
                ds.save_label(image_id, str(rf), tag, {"model": model, "params": _jsonable(result_json)})
                result_json["label_saved"] = {"image": image_id, "tag": tag}
            data = rf.read_bytes()
            name = "result" + _suffix(rf.name)
            if rf.parent != scope:
                rf.unlink(missing_ok=True)
    return _jsonable(result_json), data, name


def _suffix(name: str) -> str:
    for ext in (".seg.nrrd", ".nii.gz"):
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_default))


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def respond(result: dict, data: bytes | None, name: str | None, output: str | None) -> Response:
    if data is None or output == "json":
        return JSONResponse(result)
    if output == "image":
        return Response(data, media_type=MIME.get(_suffix(name or ""), "application/octet-stream"),
                        headers={"content-disposition": f'attachment; filename="{name}"'})
    enc = MultipartEncoder(fields={
        "params": (None, json.dumps(result), "application/json"),
        "image": (name, data, "application/octet-stream"),
    })
    return Response(content=enc.to_string(), media_type=enc.content_type)


@router.post("/infer/{model}")
async def infer(
    request: Request,
    model: str,
    image: str = "",
    session_id: str = "",
    output: str | None = None,
    params: Annotated[str, Form()] = "{}",
    file: Annotated[UploadFile | None, File()] = None,
    label: Annotated[UploadFile | None, File()] = None,
) -> Response:
    instance = request.app.state.instance
    settings = request.app.state.settings
    model = known_name(model, instance._infers, "model")
    if session_id:
        raise InvalidParams("sessions are not supported by this server: upload the image with the request instead")
    if label is not None:
        raise InvalidParams(f"task {model!r} takes no label input")
    if output is not None and output not in OUTPUTS:
        raise InvalidParams(f"output must be one of {list(OUTPUTS)}")
    task = instance._infers[model]
    accepted = {**INFER_COMMON, **params_from_config(task.config())}
    p = check_params(json_object(params), accepted, f"task {model!r}")
    if (file is not None) == bool(image):
        raise InvalidParams("give exactly one input: ?image=<datastore id> or a file upload")
    loop = asyncio.get_running_loop()
    rid = request.state.request_id
    timings = getattr(request.state, "timings", {})
    entered = time.perf_counter()
    if hasattr(request.state, "t0"):
        timings["parse"] = (entered - request.state.t0) * 1000  # headers + multipart body read and spooled

    def timed_run() -> tuple[dict, bytes | None, str | None]:
        started = time.perf_counter()
        timings["queue"] = (started - entered) * 1000  # waiting for an inference thread
        try:
            return run_infer(instance, settings, model, image, p, file, rid)
        finally:
            timings["handler"] = (time.perf_counter() - started) * 1000  # what the in-process call costs

    result, data, name = await loop.run_in_executor(request.app.state.infer_pool, timed_run)
    encode_start = time.perf_counter()
    response = respond(result, data, name, output)
    timings["encode"] = (time.perf_counter() - encode_start) * 1000
    return response
