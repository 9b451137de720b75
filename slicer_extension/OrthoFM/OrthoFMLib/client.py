"""HTTP client for an OrthoFM (MONAI Label 0.8.5) server, standard library only.

Why not MONAI Label's own client: it crashes on JSON-only (classification) replies, forces label
results to uint8, parses replies with the removed ``cgi`` module and has no timeouts, cancellation or
readable errors. This one speaks the same REST API (see docs/slicer.md) and adds those.

Every call accepts ``cancel`` (a ``threading.Event``): it is checked between upload/download chunks,
while waiting for the server to answer and between training polls, and raises ``OrthoFMCancelled``.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .capabilities import ServerInfo, parse_server_info
from .errors import (
    OrthoFMAuthError,
    OrthoFMCancelled,
    OrthoFMConnectionError,
    OrthoFMError,
    OrthoFMFormatError,
    OrthoFMTimeoutError,
)
from .multipart import FormField, FormFile, MultipartBody, header_param, parse_multipart

#: progress(done_bytes, total_bytes or None)
ProgressCallback = Callable[[int, "int | None"], None]

_TERMINAL_TRAIN_STATES = ("DONE", "ERROR", "STOPPED")

#: kept-alive connections per client: Slicer runs at most a few background requests at once
_MAX_IDLE_CONNECTIONS = 4

#: what a send on a connection the server has already closed raises (before any reply byte)
_STALE_CONNECTION = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, http.client.RemoteDisconnected)


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self, what: str) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OrthoFMFormatError(f"The server's reply to {what} is not valid JSON "
                                     f"({self.body[:120]!r}).") from exc


@dataclass
class InferResponse:
    """One infer reply: its JSON (always) and its result file (heatmap / label map), if any."""

    task: str
    json: dict[str, Any]
    file_data: bytes | None = None
    file_name: str | None = None
    file_content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names: x-request-id, server-timing

    @property
    def has_file(self) -> bool:
        return self.file_data is not None


class OrthoFMClient:
    """One server connection setting, with a few kept-alive HTTP connections reused across calls.

    Reuse saves a TCP handshake and a server-side connection set-up on every click. A kept connection the server has since closed (its keep-alive timeout,
    a restart) is detected before use, and a request that fails on a reused connection before any reply
    byte arrived is sent once more on a fresh one. Thread-safe: each call holds its own connection.

    ``timeout`` bounds connecting and every wait for data on ordinary calls; ``infer_timeout`` bounds
    the wait for an inference reply (a busy server queues inference requests; 3-D tasks take longer).
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0,
                 infer_timeout: float = 300.0, client_id: str = "orthofm-slicer",
                 chunk_size: int = 1 << 20, ssl_context: ssl.SSLContext | None = None) -> None:
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise OrthoFMError(f"Server URL '{url}' is not valid; it should look like http://127.0.0.1:8000")
        if timeout <= 0 or infer_timeout <= 0:
            raise ValueError("Timeouts must be positive")
        self.url = url.strip().rstrip("/")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._base_path = parsed.path.rstrip("/")
        self.token = token.strip() if token else None
        self.timeout = float(timeout)
        self.infer_timeout = float(infer_timeout)
        self.client_id = client_id
        self.chunk_size = int(chunk_size)
        self._ssl_context = ssl_context
        self._idle: list[http.client.HTTPConnection] = []
        self._idle_lock = threading.Lock()

    def close(self) -> None:
        """Close the kept-alive connections (the client stays usable: the next call opens a new one)."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ================================================================================== app and tasks
    def info(self, *, cancel: threading.Event | None = None) -> ServerInfo:
        """``GET /info/``: name, tasks (models), trainers, strategies."""
        payload = self._json("GET", "/info/", what="reading the server info (GET /info/)", cancel=cancel)
        try:
            return parse_server_info(payload)
        except (TypeError, ValueError) as exc:
            raise OrthoFMFormatError(f"{self.url} answered /info/ but not like a MONAI Label server: {exc}") from exc

    def infer(self, task: str, *, image_id: str | None = None, file: str | os.PathLike | None = None,
              file_data: bytes | None = None, file_name: str | None = None,
              params: dict[str, Any] | None = None, cancel: threading.Event | None = None,
              progress: ProgressCallback | None = None) -> InferResponse:
        """``POST /infer/{task}`` on a datastore image (``image_id``) or an uploaded file.

        Handles all three reply kinds: plain JSON (classification, embedding), multipart
        ``params`` + ``image`` (heatmaps, label maps) and a bare file.
        """
        if (image_id is None) == (file is None and file_data is None):
            raise ValueError("infer needs exactly one of image_id, file or file_data")
        request_params = {"client_id": self.client_id}
        request_params.update(params or {})
        parts: list = [FormField("params", json.dumps(request_params))]
        if file is not None:
            parts.append(FormFile("file", filename=file_name or Path(file).name, path=os.fspath(file)))
        elif file_data is not None:
            parts.append(FormFile("file", filename=file_name or "image.nrrd", data=file_data))
        query = {"image": image_id} if image_id is not None else {}
        what = f"running task '{task}'"
        resp = self._request("POST", f"/infer/{_segment(task)}", query=query, body=MultipartBody(parts),
                             what=what, timeout=self.infer_timeout, cancel=cancel, progress=progress)
        return self._infer_response(task, resp, what)

    def _infer_response(self, task: str, resp: HttpResponse, what: str) -> InferResponse:
        ctype = resp.content_type.lower()
        if ctype.startswith("application/json"):
            payload = resp.json(what)
            if not isinstance(payload, dict):
                raise OrthoFMFormatError(f"Task '{task}' replied with JSON that is not an object: "
                                         f"{str(payload)[:200]}")
            return InferResponse(task=task, json=payload, headers=resp.headers)
        if ctype.startswith("multipart/"):
            payload: dict[str, Any] = {}
            result = InferResponse(task=task, json=payload, headers=resp.headers)
            for part in parse_multipart(resp.body, resp.content_type):
                if part.name == "params" and part.filename is None:
                    try:
                        loaded = json.loads(part.data.decode("utf-8")) if part.data.strip() else {}
                    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                        raise OrthoFMFormatError(f"Task '{task}' sent an unreadable 'params' part.") from exc
                    result.json = loaded if isinstance(loaded, dict) else {"result": loaded}
                elif part.filename is not None or part.name in ("image", "file", "label"):
                    result.file_data = part.data
                    result.file_name = part.filename or f"{task}.nrrd"
                    result.file_content_type = part.content_type
            return result
        # output=image (FileResponse) or any other single file
        disposition = resp.headers.get("content-disposition", "")
        name = header_param(disposition, "filename", "content-disposition") if disposition else None
        return InferResponse(task=task, json={}, file_data=resp.body, file_name=name or f"{task}.nrrd",
                             file_content_type=resp.content_type, headers=resp.headers)

    # ================================================================================== datastore
    def datastore(self, output: str = "stats", *, cancel: threading.Event | None = None) -> Any:
        """``GET /datastore/?output=stats|all|train``."""
        return self._json("GET", "/datastore/", query={"output": output},
                          what="reading the datastore (GET /datastore/)", cancel=cancel)

    def upload_image(self, image_id: str, *, file: str | os.PathLike | None = None,
                     file_data: bytes | None = None, file_name: str | None = None,
                     params: dict[str, Any] | None = None, cancel: threading.Event | None = None,
                     progress: ProgressCallback | None = None) -> str:
        """``PUT /datastore/image?image=<id>``; returns the id the server stored it under.

        ``file_name``'s extension decides the stored format (``.nrrd`` for Slicer volumes, ``.dcm`` for
        an original DICOM file), so it must be right.
        """
        _check_id(image_id)
        if (file is None) == (file_data is None):
            raise ValueError("upload_image needs exactly one of file or file_data")
        name = file_name or (Path(file).name if file is not None else f"{image_id}.nrrd")
        fpart = FormFile("file", filename=name, path=os.fspath(file) if file is not None else None, data=file_data)
        body = MultipartBody([FormField("params", json.dumps({"client_id": self.client_id, **(params or {})})),
                              fpart])
        payload = self._json("PUT", "/datastore/image", query={"image": image_id}, body=body,
                             what=f"uploading image '{image_id}'", cancel=cancel, progress=progress)
        return str(payload.get("image", image_id)) if isinstance(payload, dict) else image_id

    def image_exists(self, image_id: str, *, cancel: threading.Event | None = None) -> bool:
        try:
            self._request("HEAD", "/datastore/image", query={"image": image_id},
                          what=f"checking image '{image_id}'", cancel=cancel)
            return True
        except OrthoFMError as exc:
            if exc.status == 404:
                return False
            raise

    def image_info(self, image_id: str, *, cancel: threading.Event | None = None) -> dict[str, Any]:
        return self._json("GET", "/datastore/image/info", query={"image": image_id},
                          what=f"reading info of image '{image_id}'", cancel=cancel)

    def download_image(self, image_id: str, dest_dir: str | os.PathLike, *,
                       cancel: threading.Event | None = None, progress: ProgressCallback | None = None) -> Path:
        """``GET /datastore/image?image=<id>`` into ``dest_dir`` (file name as the server sends it)."""
        resp = self._request("GET", "/datastore/image", query={"image": image_id},
                             what=f"downloading image '{image_id}'", cancel=cancel, progress=progress)
        return _save_download(resp, dest_dir, fallback=f"{image_id}.nrrd")

    def download_label(self, label_id: str, tag: str, dest_dir: str | os.PathLike, *,
                       cancel: threading.Event | None = None) -> Path:
        resp = self._request("GET", "/datastore/label", query={"label": label_id, "tag": tag},
                             what=f"downloading label '{label_id}' (tag '{tag}')", cancel=cancel)
        return _save_download(resp, dest_dir, fallback=f"{label_id}.nrrd")

    def save_label(self, image_id: str, *, tag: str = "final", file: str | os.PathLike | None = None,
                   file_data: bytes | None = None, file_name: str | None = None,
                   params: dict[str, Any] | None = None, cancel: threading.Event | None = None,
                   progress: ProgressCallback | None = None) -> dict[str, Any]:
        """``PUT /datastore/label?image=<id>&tag=<tag>`` (multipart ``label`` + ``params``)."""
        _check_id(image_id)
        _check_tag(tag)
        if (file is None) == (file_data is None):
            raise ValueError("save_label needs exactly one of file or file_data")
        name = file_name or (Path(file).name if file is not None else f"{image_id}.nrrd")
        fpart = FormFile("label", filename=name, path=os.fspath(file) if file is not None else None,
                         data=file_data)
        body = MultipartBody([FormField("params", json.dumps({"client_id": self.client_id, **(params or {})})),
                              fpart])
        return self._json("PUT", "/datastore/label", query={"image": image_id, "tag": tag}, body=body,
                          what=f"saving the '{tag}' label of image '{image_id}'", cancel=cancel, progress=progress)

    def save_class_label(self, image_id: str, label: str, *, tag: str = "cls",
                         extra: dict[str, Any] | None = None,
                         cancel: threading.Event | None = None) -> dict[str, Any]:
        """Image-level class label: a small JSON label file ``{"label": name, ...}`` under ``tag``."""
        if not label:
            raise ValueError("Choose a class before submitting a class label")
        document = {"label": label, **(extra or {})}
        return self.save_label(image_id, tag=tag, file_data=json.dumps(document).encode("utf-8"),
                               file_name=f"{image_id}.json", params={"label": label}, cancel=cancel)

    # ================================================================================== active learning
    def next_sample(self, strategy: str = "random", params: dict[str, Any] | None = None, *,
                    cancel: threading.Event | None = None) -> dict[str, Any] | None:
        """``POST /activelearning/{strategy}``; ``None`` when nothing is left to label."""
        payload = self._json("POST", f"/activelearning/{_segment(strategy)}",
                             json_body={"client_id": self.client_id, **(params or {})},
                             what=f"asking strategy '{strategy}' for the next sample", cancel=cancel)
        if not payload or not isinstance(payload, dict) or not payload.get("id"):
            return None
        return payload

    # ================================================================================== training
    def train_start(self, task: str, params: dict[str, Any] | None = None, *,
                    cancel: threading.Event | None = None) -> dict[str, Any]:
        """``POST /train/{task}``; returns the submitted task record (``id``, ``status``...)."""
        try:
            return self._json("POST", f"/train/{_segment(task)}", json_body=params or {},
                              what=f"starting training of '{task}'", cancel=cancel)
        except OrthoFMError as exc:
            if exc.status == 429:
                raise OrthoFMError("A training run is already running on the server. Wait for it to finish "
                                   "or press Stop training first.", status=429, url=exc.url,
                                   detail=exc.detail) from exc
            raise

    def train_status(self, *, all_runs: bool = False, check_if_running: bool = False,
                     cancel: threading.Event | None = None) -> Any:
        """``GET /train/``: the latest run (or all runs); ``None`` when there is none (HTTP 404)."""
        try:
            return self._json("GET", "/train/", query={"all": str(all_runs).lower(),
                                                       "check_if_running": str(check_if_running).lower()},
                              what="reading the training status", cancel=cancel)
        except OrthoFMError as exc:
            if exc.status == 404:
                return None
            raise

    def train_stop(self, *, cancel: threading.Event | None = None) -> Any:
        """``DELETE /train/``: stop the running training (``None`` if nothing ran)."""
        return self._json("DELETE", "/train/", what="stopping the training", cancel=cancel)

    def wait_for_training(self, run_id: str | None = None, *, poll_interval: float = 1.0,
                          timeout: float | None = None, cancel: threading.Event | None = None,
                          on_status: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll ``GET /train/`` until the run reaches DONE, ERROR or STOPPED and return its record.

        Cancelling stops waiting, not the training (use ``train_stop`` for that).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self._run_record(run_id, cancel)
            if status is not None and on_status is not None:
                on_status(status)
            if status is not None and str(status.get("status", "")).upper() in _TERMINAL_TRAIN_STATES:
                return status
            if deadline is not None and time.monotonic() > deadline:
                state = status.get("status") if status else "unknown"
                raise OrthoFMTimeoutError(f"Training did not finish within {timeout:.0f} s (last state: {state}). "
                                          "It keeps running on the server; check again later.", url=self.url)
            _sleep(poll_interval, cancel, "waiting for the training to finish")

    def _run_record(self, run_id: str | None, cancel: threading.Event | None) -> dict[str, Any] | None:
        records = self.train_status(all_runs=run_id is not None, cancel=cancel)
        if records is None:
            return None
        if run_id is None:
            return records if isinstance(records, dict) else None
        for record in records if isinstance(records, list) else [records]:
            if isinstance(record, dict) and record.get("id") == run_id:
                return record
        return None

    # ================================================================================== transport
    def _json(self, method: str, path: str, *, what: str, query: dict[str, str] | None = None,
              body: MultipartBody | None = None, json_body: Any = None,
              cancel: threading.Event | None = None, progress: ProgressCallback | None = None) -> Any:
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            resp = self._request(method, path, query=query, body=data, content_type="application/json",
                                 what=what, cancel=cancel, progress=progress)
        else:
            resp = self._request(method, path, query=query, body=body, what=what, cancel=cancel,
                                 progress=progress)
        if not resp.body.strip():
            return None
        return resp.json(what)

    def _request(self, method: str, path: str, *, what: str, query: dict[str, str] | None = None,
                 body: MultipartBody | bytes | None = None, content_type: str | None = None,
                 timeout: float | None = None, cancel: threading.Event | None = None,
                 progress: ProgressCallback | None = None) -> HttpResponse:
        timeout = self.timeout if timeout is None else timeout
        target = self._base_path + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json, multipart/form-data, */*", "User-Agent": "OrthoFM-Slicer"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        total: int | None = 0
        if isinstance(body, MultipartBody):
            headers["Content-Type"] = body.content_type
            total = len(body)
        elif body is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
            total = len(body)
        chunks = _body_chunks(body, self.chunk_size)
        if method in ("POST", "PUT") or body is not None:
            headers["Content-Length"] = str(total)

        _check_cancel(cancel, what)
        conn, reused = self._checkout()
        try:
            try:
                try:
                    raw = self._send(conn, method, target, headers, chunks, total, timeout, cancel, what, progress)
                except _STALE_CONNECTION:
                    if not reused:
                        raise
                    # the server closed the kept connection (keep-alive timeout, restart) between our check and
                    # its answer: send once more on a fresh one (once only; OrthoFM's calls are idempotent)
                    conn.close()
                    conn, reused = self._connection(), False
                    chunks = _body_chunks(body, self.chunk_size)
                    raw = self._send(conn, method, target, headers, chunks, total, timeout, cancel, what, progress)
                resp_headers = {k.lower(): v for k, v in raw.getheaders()}
                length = resp_headers.get("content-length")
                expected = int(length) if length and length.isdigit() else None
                data = bytearray()
                if method != "HEAD":
                    while True:
                        _check_cancel(cancel, what)
                        block = raw.read(self.chunk_size) if expected is None else raw.read1(self.chunk_size)
                        if not block:
                            break
                        data.extend(block)
                        if progress is not None:
                            progress(len(data), expected)
                    if expected is not None and len(data) < expected:
                        raise OrthoFMConnectionError(
                            f"The connection to {self.url} closed while {what} ({len(data)} of {expected} bytes "
                            "received). Try again; if it repeats, check the server log.", url=self.url)
                    raw.read()  # at the end of the body: marks the exchange complete, so the connection can be kept
                resp = HttpResponse(raw.status, resp_headers, bytes(data))
                keep = not raw.will_close and raw.isclosed()
            except OrthoFMError:
                raise
            except ConnectionRefusedError as exc:
                raise OrthoFMConnectionError(
                    f"Cannot connect to the OrthoFM server at {self.url}: connection refused. Is the server "
                    "running (orthofm serve) and are the address and port right?", url=self.url) from exc
            except socket.gaierror as exc:
                raise OrthoFMConnectionError(
                    f"Cannot find the host '{self._host}' of server URL {self.url} ({exc.strerror}). "
                    "Check the address.", url=self.url) from exc
            except (socket.timeout, TimeoutError) as exc:  # noqa: UP041 (distinct types before Python 3.10)
                raise OrthoFMTimeoutError(
                    f"The server at {self.url} did not answer within {timeout:g} s while {what}. It may be busy "
                    "(requests queue behind running inferences) or unreachable; try again or raise the timeout in "
                    "the OrthoFM settings.", url=self.url) from exc
            except ssl.SSLError as exc:
                raise OrthoFMConnectionError(f"TLS error talking to {self.url}: {exc}. Check the URL scheme "
                                             "(http or https) and the server certificate.", url=self.url) from exc
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                raise OrthoFMConnectionError(
                    f"Lost the connection to {self.url} while {what}: {exc}. Is the server still running?",
                    url=self.url) from exc
        except BaseException:
            conn.close()  # a cancelled or failed exchange leaves the connection in an unknown state
            raise
        if keep:
            self._checkin(conn)
        else:
            conn.close()
        if resp.status >= 400:
            raise self._http_error(resp, what)
        return resp

    def _send(self, conn: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str],
              chunks: Iterable[bytes], total: int | None, timeout: float, cancel: threading.Event | None,
              what: str, progress: ProgressCallback | None) -> http.client.HTTPResponse:
        """Send one request on ``conn`` (connecting it if new) and wait for the reply's status line."""
        if conn.sock is None:
            conn.connect()
            # headers and body go out as separate writes: without TCP_NODELAY, Nagle's algorithm holds the
            # body back until the server acknowledges the headers (delayed ACK), milliseconds per request
            raw_sock = getattr(conn.sock, "setsockopt", None)
            if raw_sock is not None:
                raw_sock(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.putrequest(method, target, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        sent = 0
        for chunk in chunks:
            _check_cancel(cancel, what)
            if chunk:
                conn.send(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(sent, total)
        _wait_readable(conn, timeout, cancel, what)
        return conn.getresponse()

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle kept-alive connection that is still open (and whether it is one), else a new one."""
        while True:
            with self._idle_lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connection(), False
            if _still_open(conn):
                conn.sock.settimeout(self.timeout)  # type: ignore[union-attr]
                return conn, True
            conn.close()

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._idle_lock:
            if len(self._idle) < _MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=self._ssl_context)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _http_error(self, resp: HttpResponse, what: str) -> OrthoFMError:
        detail = _error_detail(resp)
        status = resp.status
        if status == 401:
            return OrthoFMAuthError(
                f"The server at {self.url} needs a valid access token (HTTP 401: {detail}). "
                + ("The token you entered was rejected or has expired; get a new one." if self.token
                   else "Enter the token in the Connect panel."), status=status, url=self.url, detail=detail)
        if status == 403:
            return OrthoFMAuthError(
                f"Your token is valid but not allowed to do this ({what}; HTTP 403: {detail}). Ask the server "
                "administrator for the needed role.", status=status, url=self.url, detail=detail)
        if status == 404:
            return OrthoFMError(f"Not found while {what} (HTTP 404: {detail}).", status=status, url=self.url,
                                detail=detail)
        if status >= 500 and detail in ("", "Internal Server Error"):
            return OrthoFMError(
                f"The server failed while {what} (HTTP {status}) without saying why. Its log has the reason: "
                f"the terminal running the server, or {self.url}/logs/.", status=status, url=self.url,
                detail=detail)
        return OrthoFMError(f"The server refused {what} (HTTP {status}): {detail}", status=status, url=self.url,
                            detail=detail)


# ====================================================================================== helpers
def _error_detail(resp: HttpResponse) -> str:
    """The server's reason: FastAPI's ``detail`` (text or validation list), plus a request id if it sent one."""
    text = resp.body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    if not isinstance(payload, dict) or "detail" not in payload:
        return text[:500]
    detail = payload["detail"]
    if isinstance(detail, list):  # FastAPI validation errors
        message = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg', d)}"
                            if isinstance(d, dict) else str(d) for d in detail)
    else:
        message = str(detail)
    request_id = payload.get("request_id") or resp.headers.get("x-request-id")
    return f"{message} (request id {request_id})" if request_id and resp.status >= 500 else message


def _wait_readable(conn: http.client.HTTPConnection, timeout: float, cancel: threading.Event | None,
                   what: str) -> None:
    """Wait for the first reply byte in short slices so a cancel request is seen within ~0.1 s."""
    sock = conn.sock
    if sock is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        _check_cancel(cancel, what)
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no reply within {timeout} s")
        readable, _, _ = select.select([sock], [], [], min(0.1, remaining))
        if readable:
            return


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """A kept connection is reusable only if the server has not closed it: an idle socket that reads as
    ready has either an EOF (closed) or stray bytes (out of sync); both mean discard it."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _body_chunks(body: MultipartBody | bytes | None, chunk_size: int) -> Iterable[bytes]:
    """The request body as blocks of at most ``chunk_size`` bytes, small parts joined so that a multipart
    upload of a small image leaves in one write instead of one per part."""
    if body is None:
        return ()
    if isinstance(body, MultipartBody):
        return _coalesce(body.chunks(chunk_size), chunk_size)
    return [body[i:i + chunk_size] for i in range(0, len(body), chunk_size)] or [b""]


def _coalesce(parts: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    buf = bytearray()
    for part in parts:
        if buf and len(buf) + len(part) > chunk_size:
            yield bytes(buf)
            buf.clear()
        if len(part) >= chunk_size:
            yield part
        else:
            buf.extend(part)
    if buf:
        yield bytes(buf)


def _check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise OrthoFMCancelled(f"Cancelled while {what}.")


def _sleep(seconds: float, cancel: threading.Event | None, what: str) -> None:
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise OrthoFMCancelled(f"Cancelled while {what}.")


def _save_download(resp: HttpResponse, dest_dir: str | os.PathLike, fallback: str) -> Path:
    disposition = resp.headers.get("content-disposition", "")
    name = header_param(disposition, "filename", "content-disposition") if disposition else None
    name = Path(name).name if name else fallback
    if name in ("", ".", ".."):
        name = fallback
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    tmp = target.with_name(f".{target.name}.part")
    with open(tmp, "wb") as f:
        f.write(resp.body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


def _segment(name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"'{name}' is not a valid task or strategy name")
    return urllib.parse.quote(name, safe="")


def _check_id(image_id: str) -> None:
    if not image_id or "/" in image_id or "\\" in image_id or image_id in (".", ".."):
        raise ValueError(f"Image id '{image_id}' is not valid: use letters, digits, '-', '_' or '.'")


def _check_tag(tag: str) -> None:
    if not tag or not all(c.isalnum() or c in "-_" for c in tag):
        raise ValueError(f"Label tag '{tag}' is not valid: use letters, digits, '-' or '_'")
