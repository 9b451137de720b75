"""HTTP errors the server answers with: a status, a machine-readable code and a message naming the problem.

Every 4xx says what was wrong with the request; a genuine fault is a 500 carrying only a request id (the
details go to the server log under that id, never to the client).
"""

from __future__ import annotations


class ApiError(Exception):
    """A client error with a status code; ``code`` is stable for clients, ``message`` is for people."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self, request_id: str) -> dict:
        return {"error": self.code, "detail": self.message, "request_id": request_id}


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "too_large"


class UnsupportedMedia(ApiError):
    status = 415
    code = "unsupported_media"


class InvalidParams(ApiError):
    status = 422
    code = "invalid_params"


class Busy(ApiError):
    status = 429
    code = "busy"


class ServiceUnavailable(ApiError):
    status = 503
    code = "unavailable"
