"""Errors raised by OrthoFMLib.

Every error carries a message a person can act on (what failed, where, what to try), because the
Slicer module shows ``str(error)`` directly in the status line and in a message box.
"""

from __future__ import annotations


class OrthoFMError(Exception):
    """Any failure talking to the server or reading one of its results."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None,
                 detail: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.detail = detail


class OrthoFMConnectionError(OrthoFMError):
    """The server could not be reached (refused, unknown host, reset)."""


class OrthoFMTimeoutError(OrthoFMError):
    """The server did not answer within the configured timeout."""


class OrthoFMAuthError(OrthoFMError):
    """HTTP 401/403: the token is missing, wrong, expired or lacks a role."""


class OrthoFMCancelled(OrthoFMError):
    """The user cancelled the operation (the cancel event was set)."""


class OrthoFMFormatError(OrthoFMError):
    """A reply or file the server sent could not be understood."""
