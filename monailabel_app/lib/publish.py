"""Atomic publishing of trained artefacts (heads, decoders, normal banks) that the server picks up live.

Layout: ``<root>/<name>/v0007/`` (a complete folder) and ``<root>/<name>/CURRENT`` (text: ``v0007``). A new
version is written into a hidden temp folder, fsynced, renamed into place, and only then does ``CURRENT``
change (atomic file replace). A reader therefore sees the old complete version or the new complete one; a
training killed half-way leaves only a hidden temp folder, and the previous version keeps being served.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from orthofm.utils.atomic import atomic_write_text

CURRENT = "CURRENT"
_VERSION = re.compile(r"^v(\d{4,})$")
KEEP = 3


def current(folder: str | os.PathLike[str]) -> Path | None:
    """The published version folder, or None when nothing was published (or it was removed)."""
    folder = Path(folder)
    try:
        name = (folder / CURRENT).read_text().strip()
    except OSError:
        return None
    if not _VERSION.match(name):
        return None
    path = folder / name
    return path if path.is_dir() else None


def versions(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION.match(p.name)))


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(folder: str | os.PathLike[str], write: Callable[[Path], None], keep: int = KEEP) -> Path:
    """Write a new version with ``write(tmp_folder)`` and make it current atomically; returns its folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".incoming-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        n = (versions(folder) or [0])[-1] + 1
        final = folder / f"v{n:04d}"
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(folder / CURRENT, final.name + "\n")
    for old in versions(folder)[:-keep]:
        shutil.rmtree(folder / f"v{old:04d}", ignore_errors=True)
    for stale in folder.glob(".incoming-*"):  # left by a killed training
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final
