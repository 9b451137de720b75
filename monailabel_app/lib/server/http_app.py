"""Build the FastAPI app: MONAI Label's app object behind OrthoFM's hardened routes.

Which MONAI Label routes are served, and how:
- ours, hardened: /infer, /datastore (every route), /activelearning, /scoring, /train, /info, /health, /auth
- not served (no OrthoFM client needs them, each is an unchecked file or path input): /session, /batch,
  /model (weight upload), /logs (log file download), /ohif, /proxy, /infer/wsi, /reload
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import ServerSettings
from .errors import ApiError

log = logging.getLogger("orthofm.server")


def lower_thread_priority(niceness: int) -> None:
    """Linux schedules threads individually: a higher nice value for compute threads keeps the event loop (and
    with it /info, /health and request routing) first in line for a core on a busy machine."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):  # not Linux, or not permitted: only a latency optimisation
        pass


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", "-")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error", "detail", "request_id"}``; no traceback ever reaches a client."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(_rid(request)), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = {"error": "invalid_params", "detail": _validation_message(exc), "request_id": _rid(request)}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 429: "busy"}
        code = codes.get(exc.status_code, "http_error")
        detail = exc.detail if exc.status_code < 500 else "internal server error; quote the request id"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        body = {"error": code, "detail": detail, "request_id": _rid(request)}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        log.error("request %s failed: %s", _rid(request), type(exc).__name__, exc_info=exc)
        body = {"error": "internal_error", "detail": "internal server error; quote the request id",
                "request_id": _rid(request)}
        return JSONResponse(body, status_code=500)


def create_app(settings: ServerSettings) -> FastAPI:
    """The ASGI app `orthofm serve` runs (MONAI Label settings must already be in the environment)."""
    from monailabel.interfaces.utils.app import app_instance

    from . import routes_core, routes_datastore, routes_infer, routes_tasks
    from .middleware import RequestGuard

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        instance = app_instance()
        instance.server_mode(True)
        instance.on_init_complete()
        app.state.instance = instance
        yield
        routes_tasks.stop_background_tasks()
        shutdown = getattr(instance, "shutdown", None)
        if shutdown is not None:
            shutdown()
        app.state.infer_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="OrthoFM (MONAI Label)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,  # body size: capped by RequestGuard (JSON 413), not FastAPI's plain-text limit
    )
    app.state.settings = settings
    # Inference off the event loop: one thread per core; backbone forwards are batched across them.
    app.state.infer_pool = ThreadPoolExecutor(max_workers=settings.infer_workers, thread_name_prefix="infer",
                                              initializer=lower_thread_priority, initargs=(10,))
    install_error_handlers(app)
    for module in (routes_core, routes_infer, routes_datastore, routes_tasks):
        app.include_router(module.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID"],
        )
    # Outermost: nothing (not even CORS) runs for a request the guard refuses, except preflights.
    app.add_middleware(RequestGuard, token=settings.token, max_body=settings.max_upload_bytes)
    return app
