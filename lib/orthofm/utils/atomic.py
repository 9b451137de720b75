"""Crash-safe file writes: a reader sees either the old file or the complete new one, never a torn one.

Files users keep (labels, heads, checkpoints, datastore JSON) must survive a kill or a full disk mid-write.
The recipe: write a temp file in the *same folder* (so ``os.replace`` is an atomic rename on one file
system), flush + ``fsync`` it, ``os.replace`` it over the target, then ``fsync`` the folder so the rename
itself is durable. On any error the temp file is removed and the old target is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "fsync_file", "temp_name_for"]

_TMP_MARK = ".tmp-"


def temp_name_for(target: Path) -> str:
    """A hidden, unique sibling name that keeps the full suffix chain (``.nii.gz``, ``.seg.nrrd``).

    Writers such as ITK and pynrrd pick the format from the extension, so the temp file must keep it.
    """
    name = target.name
    lead = len(name) - len(name.lstrip("."))
    body = name[lead:]
    stem, dot, suffixes = body.partition(".")
    return f".{name[:lead]}{stem}{_TMP_MARK}{secrets.token_hex(4)}{dot}{suffixes}"


def _resolve_target(path: str | os.PathLike[str]) -> Path:
    target = Path(os.path.realpath(os.fspath(path)))  # write through a symlink, keep the link
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {os.fspath(path)!r}: it is a directory")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {os.fspath(path)!r}: folder {str(target.parent)!r} does not exist")
    return target


def _reserve_temp(target: Path) -> Path:
    """Create an empty temp file next to ``target`` (mode 0o666 minus umask, like a normal new file)."""
    for _ in range(100):
        tmp = target.with_name(temp_name_for(target))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a unique temp file next to {str(target)!r}")


def fsync_file(path: Path) -> None:
    """Flush a finished file to disk before the rename that publishes it (a crash then leaves old or new, never half)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the rename durable. Not every platform / file system allows fsync on a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, target: Path) -> None:
    if target.exists():  # keep the permissions a user gave the existing file
        os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path`` atomically.

    Use it with writers that want a file name (``nrrd.write``, ``itk.imwrite``, ``torch.save``)::

        with atomic_path("labels/knee.seg.nrrd") as tmp:
            nrrd.write(str(tmp), data, header)

    The temp file exists (empty) when the block starts and keeps the target's extension. If the block
    raises, the temp file is deleted and the target is unchanged.
    """
    target = _resolve_target(path)
    tmp = _reserve_temp(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer removed the temp file {str(tmp)!r} before it could be committed")
        _commit(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path written."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes needs bytes, got {type(data).__name__}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(os.path.realpath(os.fspath(path)))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (encoded with ``encoding``); returns the path written."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text needs str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))
