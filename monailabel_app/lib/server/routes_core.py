"""Liveness, app info and MONAI Label's auth discovery (static bearer token)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Form, Request

from .errors import Unauthorized

router = APIRouter()


@router.get("/health", include_in_schema=False)
@router.get("/health/", include_in_schema=False)
async def health() -> dict:
    """Liveness only: no app state, no auth (load balancers and `make run` poll it)."""
    return {"status": "ok"}


@router.get("/info/")
@router.get("/info", include_in_schema=False)
async def info(request: Request) -> dict:
    return request.app.state.instance.info()


@router.get("/auth/")
@router.get("/auth", include_in_schema=False)
async def auth_status(request: Request) -> dict:
    """MONAI Label clients ask this to decide whether to show a login dialog."""
    return {"enabled": request.app.state.settings.auth_required}


@router.post("/auth/token")
async def auth_token(request: Request, username: Annotated[str, Form()] = "",
                     password: Annotated[str, Form()] = "") -> dict:
    """Password login for MONAI Label's Slicer plugin: the password is the API token; any user name."""
    token = request.app.state.settings.token
    if not token or not hmac.compare_digest(password.encode(), token.encode()):
        raise Unauthorized("wrong token (use the server's API token as the password)")
    return {"access_token": token, "token_type": "bearer"}


@router.get("/auth/token/valid")
async def auth_valid() -> dict:
    """Reached only with a valid token (the guard refuses the rest)."""
    return {}
