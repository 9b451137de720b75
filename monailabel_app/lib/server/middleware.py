"""The outermost ASGI layer: request id, access control, upload cap and a JSON answer for every failure.

Runs before FastAPI parses anything, so an unauthenticated or oversized request is refused before a byte of
its body is read or spooled to disk.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("orthofm.server.access")

# Reachable without a token: liveness, and MONAI Label's auth discovery/login so its clients can sign in.
PUBLIC_PATHS = frozenset({"/health", "/health/", "/auth", "/auth/", "/auth/token"})


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the cap. An HTTPException, so FastAPI's form parsing
    re-raises it as is (anything else becomes a 400) and the JSON error handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds the upload limit of {limit} bytes")


class RequestGuard:
    """Request id + bearer-token check + Content-Length cap + 500-with-request-id + one access log line."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self._max_body = max_body

    def _authorised(self, scope: Scope) -> bool:
        if self._token is None:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, cred = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), self._token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex[:16]
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        scope.setdefault("state", {}).update(request_id=rid, t0=t0, timings=timings)
        path = scope.get("path", "")
        method = scope.get("method", "")
        state = {"status": 500, "started": False}
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                state["status"] = message["status"]
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [
                    rid_header, (b"server-timing", server_timing(timings, (time.perf_counter() - t0) * 1000))]
            await send(message)

        try:
            if method != "OPTIONS" and path not in PUBLIC_PATHS and not self._authorised(scope):
                await send_wrapper_json(send_wrapper, 401, {
                    "error": "unauthorized", "detail": "a valid 'Authorization: Bearer <token>' header is required",
                    "request_id": rid}, [(b"www-authenticate", b"Bearer")])
                return
            length = _content_length(scope)
            if length is not None and length > self._max_body:
                await send_wrapper_json(send_wrapper, 413, {
                    "error": "too_large",
                    "detail": f"request body of {length} bytes exceeds the upload limit of {self._max_body} bytes",
                    "request_id": rid})
                return
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self._max_body:
                        raise BodyTooLarge(self._max_body)
                return message

            await self.app(scope, receive_limited, send_wrapper)
        except BodyTooLarge as exc:
            if not state["started"]:
                await send_wrapper_json(send_wrapper, 413, {"error": "too_large", "detail": exc.detail,
                                                            "request_id": rid})
        except Exception:
            log.exception("request %s %s %s failed", rid, method, path)
            if not state["started"]:
                await send_wrapper_json(send_wrapper, 500, {
                    "error": "internal_error", "detail": "internal server error; quote the request id",
                    "request_id": rid})
        finally:
            ms = (time.perf_counter() - t0) * 1000
            log.info("%s %s %s %d %.1fms", rid, method, path, state["status"], ms)


def server_timing(timings: dict[str, float], total_ms: float) -> bytes:
    """``Server-Timing`` (W3C) value: the stages a route recorded plus ``total`` (arrival to response start), so
    a client can tell server time from transfer time without server logs."""
    parts = [f"{name};dur={ms:.2f}" for name, ms in timings.items()] + [f"total;dur={total_ms:.2f}"]
    return ", ".join(parts).encode()


async def send_wrapper_json(send: Send, status: int, body: dict, headers: list | None = None) -> None:
    await send_json(send, status, body, headers)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
