"""multipart/form-data: a streaming encoder for uploads and a parser for infer replies.

MONAI Label's own clients parse replies with the ``cgi`` module, which Python 3.13 removed; this
parser needs only the standard ``email`` header helpers. The encoder streams files from disk in
chunks so a cancel request is honoured between chunks of a large upload.
"""

from __future__ import annotations

import email.message
import email.utils
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

from .errors import OrthoFMFormatError


@dataclass(frozen=True)
class FormField:
    """A plain text form field (e.g. ``params`` holding a JSON string)."""

    name: str
    value: str
    content_type: str | None = None


@dataclass(frozen=True)
class FormFile:
    """A file field, read from ``path`` or from ``data`` in memory."""

    name: str
    filename: str
    path: str | None = None
    data: bytes | None = None
    content_type: str = "application/octet-stream"

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        if self.path is None:
            raise ValueError(f"Form file '{self.name}' has neither data nor path")
        return os.path.getsize(self.path)

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        if self.data is not None:
            for start in range(0, len(self.data), chunk_size):
                yield self.data[start:start + chunk_size]
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            while True:
                block = f.read(chunk_size)
                if not block:
                    return
                yield block


Part = Union[FormField, FormFile]  # noqa: UP007 (runtime alias; Slicer 5.6 runs Python 3.9)


class MultipartBody:
    """A multipart/form-data body with a known length that is produced chunk by chunk."""

    def __init__(self, parts: list[Part], boundary: str | None = None) -> None:
        self.parts = parts
        self.boundary = boundary or uuid.uuid4().hex
        self._heads = [self._head(p) for p in parts]
        self._tail = f"--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _head(self, part: Part) -> bytes:
        name = _quote(part.name)
        if isinstance(part, FormFile):
            disposition = f'form-data; name="{name}"; filename="{_quote(part.filename)}"'
            ctype = part.content_type
        else:
            disposition = f'form-data; name="{name}"'
            ctype = part.content_type
        head = f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        return (head + "\r\n").encode("utf-8")

    def __len__(self) -> int:
        total = len(self._tail)
        for head, part in zip(self._heads, self.parts):
            body = part.size() if isinstance(part, FormFile) else len(part.value.encode("utf-8"))
            total += len(head) + body + 2
        return total

    def chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        for head, part in zip(self._heads, self.parts):
            yield head
            if isinstance(part, FormFile):
                yield from part.chunks(chunk_size)
            else:
                yield part.value.encode("utf-8")
            yield b"\r\n"
        yield self._tail


@dataclass(frozen=True)
class ReceivedPart:
    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def header_param(header_value: str, param: str, header: str = "content-type") -> str | None:
    """Read one parameter (``boundary``, ``name``, ``filename``) of a MIME header value."""
    msg = email.message.Message()
    msg[header] = header_value
    value = msg.get_param(param, header=header)
    if isinstance(value, tuple):  # RFC 2231 encoded
        value = email.utils.collapse_rfc2231_value(value)
    return None if value is None else str(value)


def parse_multipart(body: bytes, content_type: str) -> list[ReceivedPart]:
    """Split a multipart body into parts; data stays bytes (binary-safe)."""
    boundary = header_param(content_type, "boundary")
    if not boundary:
        raise OrthoFMFormatError(f"Multipart reply has no boundary (Content-Type: {content_type}).")
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise OrthoFMFormatError("Multipart reply does not contain its boundary; the reply is truncated.")
    parts: list[ReceivedPart] = []
    pos = start + len(delimiter)
    while True:
        if body[pos:pos + 2] == b"--":
            return parts
        if body[pos:pos + 2] == b"\r\n":
            pos += 2
        elif body[pos:pos + 1] == b"\n":
            pos += 1
        header_end = body.find(b"\r\n\r\n", pos)
        sep = 4
        if header_end < 0:
            header_end, sep = body.find(b"\n\n", pos), 2
        if header_end < 0:
            raise OrthoFMFormatError("Multipart reply is truncated inside a part header.")
        headers = _parse_part_headers(body[pos:header_end])
        data_start = header_end + sep
        next_delim = body.find(b"\r\n" + delimiter, data_start)
        gap = 2
        if next_delim < 0:
            next_delim, gap = body.find(b"\n" + delimiter, data_start), 1
        if next_delim < 0:
            raise OrthoFMFormatError("Multipart reply is truncated: a part has no closing boundary.")
        disposition = headers.get("content-disposition", "")
        parts.append(ReceivedPart(
            name=header_param(disposition, "name", "content-disposition") if disposition else None,
            filename=header_param(disposition, "filename", "content-disposition") if disposition else None,
            content_type=headers.get("content-type"),
            data=body[data_start:next_delim],
        ))
        pos = next_delim + gap + len(delimiter)


def _parse_part_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", errors="replace").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return headers


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
