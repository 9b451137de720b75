"""A crash-consistent local datastore: MONAI Label's ``LocalDatastore`` with atomic writes and recovery.

What MONAI Label 0.8.5 does and what this subclass changes (measured: ``kill -9`` during label saves emptied
``datastore_v2.json`` in 10/12 trials and left zero-byte labels registered):

- the JSON is rewritten in place -> here: temp file in the same folder + fsync + ``os.replace``; the previous
  complete version is kept as ``datastore_v2.json.bak`` (a hard link, so no copy and no moment without a file);
- a corrupt/empty JSON stops the server -> here: it is set aside and the last good copy is loaded, then the
  folder is reconciled (images and labels on disk are re-registered);
- labels are copied in place -> here: written atomically; a zero-byte label is never registered, and a label
  re-saved with another extension does not leave the old file behind;
- MRI series folders (``<studies>/<id>/*.dcm``) are images too; hidden files/folders (temp files, the
  embedding sidecar store ``.orthofm/``) are never images or labels.

Large per-image data never goes into this JSON: embeddings live in the sidecar store (see ``lib/scoring``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException
from watchdog.events import PatternMatchingEventHandler
from watchdog.observers import Observer

from orthofm.utils.atomic import atomic_path, atomic_write_text, fsync_file

from .config import ServerSettings

log = logging.getLogger("orthofm.datastore")

IMAGE_PATTERNS = ("*.dcm", "*.png", "*.jpg", "*.jpeg", "*.nii.gz", "*.nii", "*.nrrd")
LABEL_PATTERNS = (*IMAGE_PATTERNS, "*.seg.nrrd", "*.json")
SIDECAR_DIR = ".orthofm"
SERVER_PID_ENV = "ORTHOFM_SERVER_PID"


def _suffixes(patterns: tuple[str, ...]) -> list[str]:
    return sorted({p.lstrip("*") for p in patterns}, key=len, reverse=True)


class OrthoDatastore(LocalDatastore):
    """``LocalDatastore`` whose every write is atomic and whose JSON recovers from its last good copy."""

    def __init__(self, datastore_path: str, *, auto_reload: bool = True, read_only: bool = False) -> None:
        self._image_suffixes = _suffixes(IMAGE_PATTERNS)
        self._label_suffixes = _suffixes(LABEL_PATTERNS)
        self._mutex = threading.RLock()
        self._observer_started = None
        self._cfg_good = False
        self.recovered_from: str | None = None
        super().__init__(
            datastore_path,
            extensions=list(LABEL_PATTERNS),
            auto_reload=False,  # our own watcher below ignores hidden temp files
            read_only=read_only,
        )
        os.makedirs(self.sidecar_path, exist_ok=True)
        if auto_reload and not read_only:
            self._start_watcher()

    # -- paths & ids ---------------------------------------------------------------------------
    @property
    def root(self) -> str:
        return self._datastore_path

    @property
    def sidecar_path(self) -> str:
        """Hidden folder for large per-image data (embeddings); never part of the datastore JSON."""
        return os.path.join(self._datastore_path, SIDECAR_DIR)

    @property
    def _backup_path(self) -> str:
        return self._datastore_config_path + ".bak"

    def _to_id(self, file: str) -> tuple[str, str]:
        """Longest known suffix wins (``x.seg.nrrd`` -> ``x``, ``.seg.nrrd``); only the end is stripped."""
        for suffix in self._label_suffixes:
            if file.lower().endswith(suffix) and len(file) > len(suffix):
                return file[: -len(suffix)], file[-len(suffix):]
        return file, ""

    def get_image_uri(self, image_id: str) -> str:
        """A series folder holding a single DICOM (a CR/DX in a folder, a one-instance DICOMweb series) is
        that file: readers treat a folder as a 3D stack."""
        return single_file(super().get_image_uri(image_id))

    def is_series(self, image_id: str) -> bool:
        obj = self._datastore.objects.get(image_id)
        return bool(obj) and obj.image.ext == "" and os.path.isdir(self.get_image_uri(image_id))

    # -- discovery -----------------------------------------------------------------------------
    def _image_candidates(self) -> dict[str, str]:
        """id -> ext for single-file images and MRI series folders in the studies folder."""
        root = self._datastore.image_path()
        found: dict[str, str] = {}
        labels_dir = os.path.basename(os.path.normpath(self._datastore.label_path(None)))
        for entry in os.scandir(root):
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if name != labels_dir and _is_dicom_folder(entry.path):
                    found[name] = ""
                continue
            if not entry.is_file() or entry.stat().st_size == 0:
                continue
            lower = name.lower()
            for suffix in self._image_suffixes:
                if lower.endswith(suffix) and len(name) > len(suffix):
                    found[name[: -len(suffix)]] = name[-len(suffix):]
                    break
        return found

    def _add_non_existing_images(self) -> int:
        invalidate = 0
        self._init_from_datastore_file()
        for image_id, ext in self._image_candidates().items():
            if image_id in self._datastore.objects:
                continue
            info = {"ts": int(time.time()), "name": image_id + ext}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            invalidate += 1
        return invalidate

    def _add_non_existing_labels(self, tag: str) -> int:
        invalidate = 0
        self._init_from_datastore_file()
        folder = self._datastore.label_path(tag)
        if not os.path.isdir(folder):
            return 0
        for entry in os.scandir(folder):
            if entry.name.startswith(".") or not entry.is_file() or entry.stat().st_size == 0:
                continue
            label_id, ext = self._to_id(entry.name)
            obj = self._datastore.objects.get(label_id)
            if not ext or obj is None or obj.labels.get(tag):
                continue
            info = {"ts": int(time.time()), "name": entry.name}
            obj.labels[tag] = DataModel(info=info, ext=ext)
            invalidate += 1
        return invalidate

    def _remove_non_existing(self) -> int:
        """Parent's pass, plus: a registered label that is empty on disk is unregistered."""
        invalidate = super()._remove_non_existing()
        for image_id, obj in self._datastore.objects.items():
            for tag in list(obj.labels):
                path = os.path.join(self._datastore.label_path(tag), image_id + obj.labels[tag].ext)
                if os.path.isfile(path) and os.path.getsize(path) == 0:
                    log.warning("unregistering empty label file for tag %r", tag)
                    del obj.labels[tag]
                    invalidate += 1
        return invalidate

    # -- JSON: atomic write, last good copy, recovery --------------------------------------------
    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=1, default=str)
            cfg = self._datastore_config_path
            if self._cfg_good and os.path.isfile(cfg):
                self._rotate_backup(cfg)
            atomic_write_text(cfg, text)
            self._cfg_good = True
            self._config_ts = os.stat(cfg).st_mtime

        with self._mutex:
            if lock:
                with FileLock(self._lock_file):
                    write()
            else:
                write()

    def _rotate_backup(self, cfg: str) -> None:
        """The complete current version becomes the last good copy (hard link: no copy, never missing)."""
        folder, name = os.path.split(cfg)
        tmp = os.path.join(folder, f".{name}.bak-{os.getpid()}-{threading.get_ident()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(cfg, tmp)
            os.replace(tmp, self._backup_path)
        except OSError:  # file systems without hard links: copy instead
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            atomic_write_text(self._backup_path, Path(cfg).read_text())

    def _load_model(self, path: str) -> LocalDatastoreModel:
        with open(path) as fp:
            text = fp.read()
        if not text.strip():
            raise ValueError(f"{os.path.basename(path)} is empty")
        return LocalDatastoreModel.model_validate_json(text)

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        with self._mutex, FileLock(self._lock_file):
            cfg = self._datastore_config_path
            if not os.path.exists(cfg):
                return
            ts = os.stat(cfg).st_mtime
            if self._config_ts == ts:
                return
            try:
                model = self._load_model(cfg)
                self._cfg_good = True
            except (ValueError, OSError) as exc:
                model = self._recover(exc)
                self._cfg_good = False  # never rotate the corrupt file into the last good copy
            model.base_path = self._datastore_path
            self._datastore = model
            if not self._cfg_good:
                self._update_datastore_file(lock=False)  # put a good JSON back in place
            self._config_ts = os.stat(cfg).st_mtime

    def _recover(self, exc: Exception) -> LocalDatastoreModel:
        """The JSON is unreadable: keep it aside for inspection, load the last good copy (or start empty)."""
        cfg = self._datastore_config_path
        aside = f"{cfg}.corrupt-{int(time.time())}"
        with contextlib.suppress(OSError):
            shutil.copyfile(cfg, aside)
        log.error("datastore JSON unreadable (%s: %s); copy kept as %s", type(exc).__name__, exc,
                  os.path.basename(aside))
        try:
            model = self._load_model(self._backup_path)
            self.recovered_from = "backup"
            log.warning("datastore recovered from its last good copy (%s)", os.path.basename(self._backup_path))
        except (ValueError, OSError) as exc2:
            log.warning("no usable last good copy (%s); rebuilding the datastore from the files on disk", exc2)
            model = LocalDatastoreModel(name="new-dataset", description="New Dataset", images_dir=".",
                                        labels_dir="labels")
            self.recovered_from = "disk"
        return model

    # -- writes ------------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Copy a validated file (or a series folder) into the studies folder atomically, then register it."""
        src = Path(image_filename)
        if src.is_dir():
            ext = ""
            image_id = image_id or src.name
        else:
            derived, ext = self._to_id(src.name)
            image_id = image_id or derived
            if ext not in self._image_suffixes:
                raise ValueError(f"unsupported image file type {src.suffix!r}")
            if src.stat().st_size == 0:
                raise ValueError("empty image file")
        dest = os.path.join(self._datastore.image_path(), image_id + ext)
        with self._mutex, FileLock(self._lock_file):
            if image_id in self._datastore.objects or os.path.exists(dest):
                raise FileExistsError(f"image id {image_id!r} already exists")
            if src.is_dir():
                tmp = os.path.join(self._datastore.image_path(), f".{image_id}.incoming-{os.getpid()}")
                shutil.copytree(src, tmp)
                for f in Path(tmp).iterdir():
                    fsync_file(f)
                os.replace(tmp, dest)
            else:
                with atomic_path(dest) as tmp:
                    shutil.copyfile(src, tmp)
            info = dict(image_info or {})
            info.update({"ts": int(time.time()), "name": image_id + ext})
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Write the label atomically, drop a stale file of another extension, then register it."""
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        if os.path.getsize(label_filename) == 0:
            raise ValueError("empty label file")
        _, ext = self._to_id(os.path.basename(label_filename))
        if ext not in self._label_suffixes:
            raise ValueError(f"unsupported label file type for {os.path.basename(label_filename)!r}")
        folder = self._datastore.label_path(label_tag)
        dest = os.path.join(folder, image_id + ext)
        with self._mutex, FileLock(self._lock_file):
            os.makedirs(folder, exist_ok=True)
            with atomic_path(dest) as tmp:
                shutil.copyfile(label_filename, tmp)
            old = obj.labels.get(label_tag)
            if old is not None and old.ext != ext:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, image_id + old.ext))
            info = dict(label_info or {})
            info.update({"ts": int(time.time()), "name": image_id + ext})
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        return image_id

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        with self._mutex:
            super().update_image_info(image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        with self._mutex:
            super().update_label_info(label_id, label_tag, info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        with self._mutex:
            super().remove_label(label_id, label_tag)
            self.refresh()

    def remove_image(self, image_id: str) -> None:
        with self._mutex:
            super().remove_image(image_id)
            self.refresh()

    def label_file(self, image_id: str, tag: str) -> str | None:
        uri = self.get_label_uri(image_id, tag)
        return uri if uri and os.path.isfile(uri) else None

    # -- watching the folder -----------------------------------------------------------------------
    def _start_watcher(self) -> None:
        """Pick up images/labels copied into the folder while serving; hidden (temp) files are ignored."""
        handler = PatternMatchingEventHandler(
            patterns=[f"*{s}" for s in self._label_suffixes] + ["*"],
            ignore_patterns=["*/.*", "*/.*/*", self._datastore_config_path, f"{self._datastore_config_path}*",
                             os.path.join(self._datastore_path, ".lock")],
            ignore_directories=False,
        )
        pending = threading.Event()

        def run_refresh() -> None:
            pending.clear()
            try:
                self.refresh()
            except Exception:
                log.exception("datastore refresh after a folder change failed")

        def on_event(event: Any) -> None:
            # coalesce a burst of events (a user copying 100 files) into one rescan shortly after
            if not pending.is_set():
                pending.set()
                t = threading.Timer(0.5, run_refresh)
                t.daemon = True
                t.start()

        handler.on_created = on_event
        handler.on_deleted = on_event
        handler.on_moved = on_event
        try:
            observer = Observer()
            observer.daemon = True
            observer.schedule(handler, recursive=True, path=self._datastore_path)
            observer.start()
            self._observer_started = observer
        except OSError as exc:
            log.warning("folder watcher not started (%s); new files appear after a restart", exc)

    def refresh(self) -> None:
        with self._mutex:
            super().refresh()

    def close(self) -> None:
        if self._observer_started is not None:
            self._observer_started.stop()


def single_file(uri: str) -> str:
    if uri and os.path.isdir(uri):
        files = [e.path for e in os.scandir(uri) if e.is_file() and not e.name.startswith(".")]
        if len(files) == 1:
            return files[0]
    return uri


def _is_dicom_folder(path: str) -> bool:
    """A series folder: at least one ``*.dcm`` (or extension-less DICOM) file directly inside."""
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.is_file() and not e.name.startswith("."):
                    if e.name.lower().endswith(".dcm"):
                        return True
                    if "." not in e.name and _has_dicm_preamble(e.path):
                        return True
    except OSError:
        return False
    return False


def _has_dicm_preamble(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def in_server_process() -> bool:
    """False in MONAI Label's background train/scoring subprocesses (they must not write the JSON)."""
    pid = os.environ.get(SERVER_PID_ENV)
    return pid is None or pid == str(os.getpid())


def init_datastore(studies: str, settings: ServerSettings) -> OrthoDatastore:
    server = in_server_process()
    return OrthoDatastore(studies, auto_reload=settings.auto_reload and server, read_only=not server)


def init_dicomweb_datastore(studies: str):
    """MONAI Label's DICOMweb datastore without the dcmqi download (no network at run time)."""
    from .dicomweb import make_dicomweb_datastore

    return make_dicomweb_datastore(studies)


__all__ = ["DefaultLabelTag", "OrthoDatastore", "init_datastore", "init_dicomweb_datastore"]
