"""The annotation loop, without Slicer: connect, send an image, run tasks, label, train.

The Slicer module's logic turns volume and segmentation nodes into ``LocalVolume`` /
label arrays and calls these methods; the module's self-test and this repository's tests drive the
same methods, so the loop is tested without Slicer and Slicer only adds the display.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .capabilities import ServerInfo, TaskInfo
from .client import OrthoFMClient, ProgressCallback
from .errors import OrthoFMError
from .geometry import Geometry
from .nrrdfile import write_nrrd
from .parameters import OrthoFMParameters
from .results import ClassificationResult, Result, Segment, parse_infer_response


@dataclass
class LocalVolume:
    """An image as Slicer holds it: ``array`` in ``(K, J, I)`` order plus its geometry.

    A 2-D radiograph is a single-slice volume, ``array.shape == (1, rows, columns)``.
    """

    name: str
    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume '{self.name}' must be (K, J, I); got shape {self.array.shape}. A 2-D image "
                             "is a (1, rows, columns) single-slice volume.")

    def nrrd_bytes(self) -> bytes:
        return write_nrrd(self.array, self.geometry, encoding="gzip")

    def content_id(self) -> str:
        """A datastore id that is stable for the same pixels and geometry (so re-sending is free)."""
        digest = hashlib.sha1()
        digest.update(str(self.array.dtype).encode() + str(self.array.shape).encode())
        digest.update(np.ascontiguousarray(self.array).tobytes())
        digest.update(np.round(self.geometry.ijk_to_ras(), 6).tobytes())
        return f"{safe_id(self.name)}_{digest.hexdigest()[:10]}"


@dataclass
class NextSample:
    """The image to label next; ``path`` is a file, or a folder of DICOM files for a series."""

    image_id: str
    path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_series(self) -> bool:
        return self.path.is_dir()


class AnnotationSession:
    """One user's session with one server."""

    def __init__(self, client: OrthoFMClient, parameters: OrthoFMParameters | None = None) -> None:
        self.client = client
        self.parameters = parameters or OrthoFMParameters(server_url=client.url)
        self.info: ServerInfo | None = None
        self.last_results: dict[str, Result] = {}

    @classmethod
    def from_parameters(cls, parameters: OrthoFMParameters) -> AnnotationSession:
        problems = parameters.validate()
        if problems:
            raise OrthoFMError("; ".join(problems))
        client = OrthoFMClient(parameters.server_url, parameters.token or None, timeout=parameters.timeout_s,
                               infer_timeout=parameters.infer_timeout_s)
        return cls(client, parameters)

    # ------------------------------------------------------------------------------------------ connect
    def connect(self, cancel: threading.Event | None = None) -> ServerInfo:
        self.info = self.client.info(cancel=cancel)
        return self.info

    def task_info(self, task: str) -> TaskInfo:
        if self.info is None:
            raise OrthoFMError("Not connected: press Connect first.")
        try:
            return self.info.task(task)
        except KeyError as exc:
            raise OrthoFMError(str(exc.args[0])) from exc

    # ------------------------------------------------------------------------------------------ images
    def upload_volume(self, volume: LocalVolume, image_id: str | None = None, *,
                      cancel: threading.Event | None = None, progress: ProgressCallback | None = None) -> str:
        """Store a Slicer volume on the server as NRRD (skipped if the same content is already there)."""
        image_id = image_id or volume.content_id()
        if self.client.image_exists(image_id, cancel=cancel):
            return image_id
        return self.client.upload_image(image_id, file_data=volume.nrrd_bytes(), file_name=f"{image_id}.nrrd",
                                        params={"source": "slicer", "name": volume.name}, cancel=cancel,
                                        progress=progress)

    def upload_file(self, path: str | Path, image_id: str | None = None, *,
                    cancel: threading.Event | None = None, progress: ProgressCallback | None = None) -> str:
        """Store an original file (e.g. a DICOM radiograph) unchanged; its extension is kept."""
        path = Path(path)
        if not path.is_file():
            raise OrthoFMError(f"Cannot upload '{path}': no such file.")
        name = path.name
        suffix = "".join(path.suffixes[-2:]) if name.endswith((".nii.gz", ".seg.nrrd")) else path.suffix
        image_id = image_id or safe_id(name[: len(name) - len(suffix)] if suffix else name)
        if self.client.image_exists(image_id, cancel=cancel):
            return image_id
        return self.client.upload_image(image_id, file=path, file_name=f"{image_id}{suffix or '.dcm'}",
                                        params={"source": "slicer", "name": name}, cancel=cancel,
                                        progress=progress)

    # ------------------------------------------------------------------------------------------ tasks
    def run_task(self, task: str, *, image_id: str | None = None, volume: LocalVolume | None = None,
                 file: str | Path | None = None, params: dict[str, Any] | None = None,
                 cancel: threading.Event | None = None, progress: ProgressCallback | None = None) -> Result:
        """Run one task on a datastore image, a Slicer volume (sent as NRRD) or a file; parse the reply."""
        info = self.task_info(task)
        request = {}
        if info.kind != "classification" and "result_extension" not in info.config:
            request.update({"result_extension": ".nrrd", "result_compress": True})
        request.update(params or {})
        if image_id is not None:
            response = self.client.infer(task, image_id=image_id, params=request, cancel=cancel, progress=progress)
        elif volume is not None:
            response = self.client.infer(task, file_data=volume.nrrd_bytes(), file_name=f"{safe_id(volume.name)}.nrrd",
                                         params=request, cancel=cancel, progress=progress)
        elif file is not None:
            response = self.client.infer(task, file=file, params=request, cancel=cancel, progress=progress)
        else:
            raise ValueError("run_task needs an image_id, a volume or a file")
        result = parse_infer_response(response, info)
        self.last_results[task] = result
        return result

    # ------------------------------------------------------------------------------------------ active learning
    def next_sample(self, dest_dir: str | Path, strategy: str | None = None, *,
                    cancel: threading.Event | None = None,
                    progress: ProgressCallback | None = None) -> NextSample | None:
        """Ask the server which image to label next and download it; ``None`` when all are labelled."""
        strategy = strategy or self.parameters.strategy
        sample = self.client.next_sample(strategy, cancel=cancel)
        if sample is None:
            return None
        image_id = str(sample["id"])
        path = self.client.download_image(image_id, dest_dir, cancel=cancel, progress=progress)
        if path.suffix.lower() == ".zip":  # a DICOM series comes as a zip of its files
            path = extract_series(path, Path(dest_dir) / image_id)
        return NextSample(image_id=image_id, path=path, info=sample)

    # ------------------------------------------------------------------------------------------ labels
    def submit_class_label(self, image_id: str, label: str, *, result: ClassificationResult | None = None,
                           cancel: threading.Event | None = None) -> dict[str, Any]:
        """Save the image-level class the annotator chose (with what the model said, for audit)."""
        extra: dict[str, Any] = {}
        if result is not None:
            extra = {"task": result.task, "model_grade": result.grade,
                     "model_probabilities": {c.label: c.probability for c in result.classes}}
            if label not in [c.label for c in result.classes]:
                raise OrthoFMError(f"'{label}' is not one of the classes of task '{result.task}': "
                                   f"{', '.join(c.label for c in result.classes)}")
        return self.client.save_class_label(image_id, label, tag=self.parameters.class_label_tag, extra=extra,
                                            cancel=cancel)

    def submit_segmentation(self, image_id: str, labelmap: np.ndarray, geometry: Geometry,
                            segments: list[Segment], *, cancel: threading.Event | None = None,
                            progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Save a label map (``(K, J, I)`` integers) as the image's ``final`` label.

        The NRRD carries Slicer's segment fields (name, colour, value), so it opens as a segmentation
        in Slicer, and MONAI Label's ``label_info`` lists name and value for the trainer.
        """
        data, label_info = encode_labelmap(labelmap, geometry, segments)
        return self.client.save_label(image_id, tag=self.parameters.final_label_tag, file_data=data,
                                      file_name=f"{image_id}.nrrd", params={"label_info": label_info},
                                      cancel=cancel, progress=progress)

    # ------------------------------------------------------------------------------------------ training
    def train(self, task: str | None = None, params: dict[str, Any] | None = None, *, epochs: int | None = None,
              wait: bool = True, on_status: Callable[[dict[str, Any]], None] | None = None,
              cancel: threading.Event | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Start training ``task`` and (by default) poll until it ends; returns the final run record.

        ``epochs`` is sent under the name the trainer's config uses (``max_epochs`` or ``epochs``) and only
        if it has one: servers that validate parameters refuse unknown keys.
        """
        task = task or self.parameters.train_task
        config: dict[str, Any] = {}
        if self.info is not None:
            if task not in self.info.trainers:
                offered = ", ".join(sorted(self.info.trainers)) or "none"
                raise OrthoFMError(f"The server has no trainer '{task}' (trainers: {offered}).")
            config = self.info.trainers[task]
        request: dict[str, Any] = {}
        if epochs is not None:
            key = next((k for k in ("max_epochs", "epochs") if k in config), None)
            if key is not None:
                request[key] = int(epochs)
        request.update(params or {})
        record = self.client.train_start(task, request, cancel=cancel)
        if not wait:
            return record
        final = self.client.wait_for_training(record.get("id"), poll_interval=self.parameters.train_poll_s,
                                              timeout=timeout, cancel=cancel, on_status=on_status)
        if str(final.get("status")).upper() == "ERROR":
            tail = "\n".join(str(x) for x in (final.get("details") or [])[-5:])
            raise OrthoFMError(f"Training of '{task}' failed on the server. Last log lines:\n{tail}")
        return final


def encode_labelmap(labelmap: np.ndarray, geometry: Geometry,
                    segments: list[Segment]) -> tuple[bytes, list[dict[str, Any]]]:
    """NRRD bytes (with ``Segment<n>_*`` fields) and MONAI Label ``label_info`` for a label map."""
    a = np.asarray(labelmap)
    if a.ndim != 3:
        raise ValueError(f"A label map must be (K, J, I), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"A label map must hold integers, got {a.dtype}")
    values = {s.value for s in segments}
    stray = sorted(int(v) for v in np.unique(a) if v != 0 and int(v) not in values)
    if stray:
        raise ValueError(f"Label map has values {stray} that no segment describes")
    dtype = np.uint8 if a.min() >= 0 and a.max() < 256 else np.uint16
    kv: dict[str, str] = {}
    for n, seg in enumerate(segments):
        kv[f"Segment{n}_ID"] = seg.segment_id or f"Segment_{seg.value}"
        kv[f"Segment{n}_Name"] = seg.name
        kv[f"Segment{n}_Color"] = " ".join(f"{c:.6g}" for c in seg.color)
        kv[f"Segment{n}_LabelValue"] = str(seg.value)
        kv[f"Segment{n}_Layer"] = "0"
    label_info = [{"name": s.name, "idx": s.value, "color": list(s.color)} for s in segments]
    return write_nrrd(a.astype(dtype), geometry, encoding="gzip", key_values=kv), label_info


def extract_series(archive: Path, folder: Path) -> Path:
    """Unpack a zipped DICOM series into ``folder`` (flat; entries that would escape it are refused)."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            if member.is_dir():
                continue
            name = Path(member.filename).name
            if not name or name.startswith(".") or member.filename.startswith("/") or ".." in Path(
                    member.filename).parts:
                raise OrthoFMError(f"The series archive from the server has an unsafe entry: {member.filename!r}")
            with zf.open(member) as src, open(folder / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    archive.unlink()
    return folder


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(name: str) -> str:
    """A datastore-safe image id from a node or file name (no dots: MONAI Label strips extensions)."""
    cleaned = _UNSAFE.sub("_", name).strip("_-") or "image"
    return cleaned[:80]


def describe_result(result: Result) -> str:
    """One line for the status bar / log."""
    if result.kind == "classification":
        exp = "" if result.expected_grade is None else f", expected grade {result.expected_grade:.2f}"
        return f"{result.task}: {result.grade} ({result.confidence:.0%}{exp})"
    if result.kind == "heatmap":
        score = "" if result.score is None else f", score {result.score:.3f}"
        rank = "" if result.normal_rank is None else f", whole image above {result.normal_rank:.0%} of normal images"
        return f"{result.task}: heatmap {tuple(result.array.shape)}{score}{rank}"
    if result.kind == "segmentation":
        return f"{result.task}: {len(result.segments)} segments on a {tuple(result.array.shape[:3])} grid"
    if result.kind == "embedding":
        return f"{result.task}: {result.vector.size}-d embedding"
    return f"{result.task}: " + json.dumps(result.raw)[:200]


def remap_labelmap(labelmap: np.ndarray, segments: list[Segment],
                   label_ids: dict[str, int]) -> tuple[np.ndarray, list[Segment]]:
    """Give segments the label values the server's task uses for their names (others get free values).

    Slicer exports segments as 1..N in list order; a trainer expects e.g. ``bone`` = 2 as its task says.
    """
    wanted = {name: value for name, value in label_ids.items() if value != 0}
    used = set(wanted.values())
    next_free = max(used | {0}) + 1
    out = np.zeros(labelmap.shape, dtype=np.uint16 if next_free + len(segments) > 255 else np.uint8)
    remapped = []
    for seg in segments:
        if seg.name in wanted:
            value = wanted.pop(seg.name)
        else:
            value = next_free
            next_free += 1
        out[labelmap == seg.value] = value
        remapped.append(Segment(seg.name, value, seg.color, 0, seg.segment_id))
    return out, remapped
