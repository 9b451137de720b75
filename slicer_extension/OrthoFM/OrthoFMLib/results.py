"""Turn infer replies into typed results the Slicer module can show.

Decided by content, not by task name: a ``prediction`` list is a classification (MONAI Label's
ClassificationWriter), a float volume is a heatmap, an integer volume or ``.seg.nrrd`` is a
segmentation, a JSON vector is an embedding. Parsing is tolerant of the small format variations
between MONAI Label apps, and strict about anything that would put a result in the wrong place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .capabilities import TaskInfo, label_mapping
from .client import InferResponse
from .colors import segment_color
from .errors import OrthoFMFormatError
from .geometry import Geometry
from .nrrdfile import NrrdImage, read_nrrd


@dataclass(frozen=True)
class ClassProbability:
    index: int
    label: str
    probability: float


@dataclass
class ClassificationResult:
    """A grade with per-class probabilities (ordered by class index)."""

    task: str
    classes: list[ClassProbability]
    grade: str
    grade_index: int
    confidence: float
    expected_grade: float | None
    scores_were_logits: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    kind = "classification"

    def probability(self, label: str) -> float:
        for c in self.classes:
            if c.label == label:
                return c.probability
        raise KeyError(f"No class '{label}' in result of task '{self.task}'")


@dataclass
class HeatmapResult:
    """A float map on the grid of the image that was sent (``array`` is ``(K, J, I)``)."""

    task: str
    array: np.ndarray
    geometry: Geometry
    score: float | None
    regions: list[dict[str, Any]]
    value_range: tuple[float, float]
    suggested_threshold: float | None
    raw: dict[str, Any] = field(default_factory=dict)
    # whole-image novelty as the share of the normal bank's held-out images it exceeds (0-1); the server's
    # ``scores.global_normal_rank``; None when the bank has no image-level reference
    normal_rank: float | None = None

    kind = "heatmap"


@dataclass(frozen=True)
class Segment:
    name: str
    value: int
    color: tuple[float, float, float]
    layer: int = 0
    segment_id: str = ""


@dataclass
class SegmentationResult:
    """Label values in ``array`` (``(K, J, I)``; ``(K, J, I, L)`` for layered ``.seg.nrrd``) and segments."""

    task: str
    array: np.ndarray
    geometry: Geometry
    segments: list[Segment]
    file_data: bytes | None = None
    file_name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    kind = "segmentation"

    @property
    def is_seg_nrrd(self) -> bool:
        return bool(self.file_name and self.file_name.endswith(".seg.nrrd"))

    def labelmap(self) -> tuple[np.ndarray, list[Segment]]:
        """One ``(K, J, I)`` label map with segment ``n`` (1-based) per segment, for labelmap import."""
        if self.array.ndim == 3:
            return self.array, self.segments
        out = np.zeros(self.array.shape[:3], dtype=np.uint16)
        segments = []
        for n, seg in enumerate(self.segments, start=1):
            out[self.array[..., seg.layer] == seg.value] = n
            segments.append(Segment(seg.name, n, seg.color, 0, seg.segment_id))
        return out, segments


@dataclass
class EmbeddingResult:
    task: str
    vector: np.ndarray
    model: str | None
    raw: dict[str, Any] = field(default_factory=dict)

    kind = "embedding"


@dataclass
class OtherResult:
    task: str
    raw: dict[str, Any]

    kind = "other"


Result = Union[  # noqa: UP007 (runtime alias; Slicer 5.6 runs Python 3.9)
    ClassificationResult, HeatmapResult, SegmentationResult, EmbeddingResult, OtherResult]


# ============================================================================================ classification
def parse_classification(payload: dict[str, Any], task: str = "", labels: Any = None) -> ClassificationResult:
    """Read MONAI Label's ``{"prediction": [{"idx", "label", "score"}]}`` or close variants.

    Also accepted: ``probabilities`` as a list or ``{label: p}``, ``scores``/``logits`` lists. Scores that
    are not a probability distribution are put through a softmax and flagged (``scores_were_logits``).
    """
    names = label_mapping(labels if labels is not None else payload.get("label_names"))
    index_to_name = {i: n for n, i in names.items()}
    pairs: list[tuple[int, str, float]] = []
    prediction = payload.get("prediction")
    if isinstance(prediction, dict):
        prediction = [prediction] if "score" in prediction else None
    if isinstance(prediction, list) and prediction and isinstance(prediction[0], dict):
        for n, item in enumerate(prediction):
            idx = int(item.get("idx", item.get("index", n)))
            label = str(item.get("label", index_to_name.get(idx, idx)))
            pairs.append((idx, label, _number(item.get("score", item.get("probability")), task)))
    else:
        values = payload.get("probabilities", payload.get("scores", payload.get("logits")))
        if values is None and isinstance(prediction, list):
            values = prediction
        if isinstance(values, dict):
            mapping = label_mapping(list(values))
            for label, p in values.items():
                idx = names.get(str(label), mapping[str(label)])
                pairs.append((idx, str(label), _number(p, task)))
        elif isinstance(values, list) and values:
            for idx, p in enumerate(values):
                pairs.append((idx, index_to_name.get(idx, str(idx)), _number(p, task)))
    if not pairs:
        raise OrthoFMFormatError(f"Task '{task}' returned no class scores (expected a 'prediction' list with "
                                 f"idx/label/score; got keys {sorted(payload)}).")
    pairs.sort(key=lambda t: t[0])
    scores = np.array([p for _, _, p in pairs], dtype=float)
    is_distribution = bool(np.all(scores >= -1e-6) and np.all(scores <= 1 + 1e-6) and abs(scores.sum() - 1) < 1e-3)
    if not is_distribution:
        e = np.exp(scores - scores.max())
        scores = e / e.sum()
    classes = [ClassProbability(idx, label, float(p)) for (idx, label, _), p in zip(pairs, scores)]
    best = max(classes, key=lambda c: c.probability)
    expected = payload.get("expected_grade", payload.get("expected"))
    if expected is None and all(isinstance(c.index, int) for c in classes):
        expected = float(sum(c.index * c.probability for c in classes))
    grade = payload.get("grade", payload.get("label"))
    grade_index = best.index
    if isinstance(grade, (int, float)) and not isinstance(grade, bool):
        grade_index = int(grade)
        grade = next((c.label for c in classes if c.index == grade_index), str(grade_index))
    elif isinstance(grade, str) and any(c.label == grade for c in classes):
        grade_index = next(c.index for c in classes if c.label == grade)
    else:
        grade = best.label
    known = {"prediction", "probabilities", "scores", "logits", "label_names", "latencies", "centroids",
             "expected_grade", "expected", "grade", "label"}
    return ClassificationResult(
        task=task, classes=classes, grade=str(grade), grade_index=grade_index,
        confidence=next(c.probability for c in classes if c.index == grade_index),
        expected_grade=None if expected is None else float(expected), scores_were_logits=not is_distribution,
        extras={k: v for k, v in payload.items() if k not in known}, raw=payload)


def _number(value: Any, task: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError) as exc:
        raise OrthoFMFormatError(f"Task '{task}' returned a non-numeric class score: {value!r}") from exc
    if not math.isfinite(x):
        raise OrthoFMFormatError(f"Task '{task}' returned a non-finite class score: {value!r}")
    return x


# ============================================================================================ volumes
def parse_heatmap(data: bytes, payload: dict[str, Any] | None = None, task: str = "",
                  source: str = "heatmap") -> HeatmapResult:
    image = read_nrrd(data, source=f"{task or 'task'} {source}")
    if image.has_list_axis:
        raise OrthoFMFormatError(f"Task '{task}' sent a multi-channel heatmap ({image.array.shape}); expected one "
                                 "value per voxel.")
    array = image.array.astype(np.float32, copy=False)
    payload = payload or {}
    finite = array[np.isfinite(array)]
    value_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    result = payload.get("result") if isinstance(payload.get("result"), dict) else payload
    score = result.get("score", result.get("anomaly_score", result.get("abnormality_score")))
    regions = result.get("regions") or []
    threshold = result.get("threshold")
    scores = result.get("scores") if isinstance(result.get("scores"), dict) else {}
    rank = scores.get("global_normal_rank")
    return HeatmapResult(task=task, array=array, geometry=image.geometry,
                         score=None if score is None else float(score),
                         regions=[r for r in regions if isinstance(r, dict)] if isinstance(regions, list) else [],
                         value_range=value_range,
                         suggested_threshold=None if threshold is None else float(threshold), raw=payload,
                         normal_rank=float(rank) if isinstance(rank, (int, float)) else None)


def parse_segmentation(data: bytes, payload: dict[str, Any] | None = None, task: str = "",
                       labels: Any = None, file_name: str | None = None) -> SegmentationResult:
    image = read_nrrd(data, source=f"{task or 'task'} label map")
    payload = payload or {}
    if np.issubdtype(image.array.dtype, np.floating):
        rounded = np.rint(image.array)
        if not np.allclose(rounded, image.array):
            raise OrthoFMFormatError(f"Task '{task}' sent a label map with fractional values; expected integers.")
        array = rounded.astype(np.int32)
    else:
        array = image.array
    segments = _segments_from_header(image) or _segments_from_json(payload.get("segments"))
    if not segments:
        names = label_mapping(labels if labels is not None else payload.get("label_names"))
        index_to_name = {i: n for n, i in names.items()}
        present = sorted(int(v) for v in np.unique(array) if v != 0) if array.ndim == 3 else []
        values = sorted(set(present) | {i for i in index_to_name if i != 0})
        segments = [Segment(index_to_name.get(v, f"label_{v}"), v,
                            segment_color(index_to_name.get(v, f"label_{v}"), v), 0, f"Segment_{v}")
                    for v in values]
    return SegmentationResult(task=task, array=array, geometry=image.geometry, segments=segments,
                              file_data=data, file_name=file_name, raw=payload)


def _segments_from_json(items: Any) -> list[Segment]:
    """OrthoFM's reply lists ``segments`` as ``[{"name", "value", "color"}]``; use them for plain label maps."""
    if not isinstance(items, list):
        return []
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item or "value" not in item:
            return []
        color = item.get("color")
        rgb = tuple(float(c) for c in color[:3]) if isinstance(color, list) and len(color) >= 3 \
            else segment_color(str(item["name"]), n + 1)
        out.append(Segment(str(item["name"]), int(item["value"]), rgb, 0, f"Segment_{int(item['value'])}"))  # type: ignore[arg-type]
    return out


def _segments_from_header(image: NrrdImage) -> list[Segment]:
    kv = image.key_values
    segments = []
    n = 0
    while f"Segment{n}_ID" in kv or f"Segment{n}_Name" in kv:
        name = kv.get(f"Segment{n}_Name", kv.get(f"Segment{n}_ID", f"Segment_{n}"))
        layer = int(kv.get(f"Segment{n}_Layer", n if image.has_list_axis else 0))
        value = int(kv.get(f"Segment{n}_LabelValue", 1 if image.has_list_axis else n + 1))
        color_text = kv.get(f"Segment{n}_Color")
        try:
            color = tuple(float(c) for c in color_text.split()[:3]) if color_text else segment_color(name, n + 1)
        except ValueError:
            color = segment_color(name, n + 1)
        segments.append(Segment(name, value, color, layer, kv.get(f"Segment{n}_ID", f"Segment_{n}")))  # type: ignore[arg-type]
        n += 1
    return segments


# ============================================================================================ embedding
def parse_embedding(payload: dict[str, Any], task: str = "") -> EmbeddingResult:
    result = payload.get("result") if isinstance(payload.get("result"), dict) else payload
    vector = result.get("embedding", result.get("features", result.get("vector")))
    if not isinstance(vector, list) or not vector:
        raise OrthoFMFormatError(f"Task '{task}' returned no embedding vector (keys: {sorted(result)}).")
    flat = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise OrthoFMFormatError(f"Task '{task}' returned an embedding with non-finite values.")
    model = result.get("model", result.get("backbone"))
    return EmbeddingResult(task=task, vector=flat, model=None if model is None else str(model), raw=payload)


# ============================================================================================ dispatch
def parse_infer_response(response: InferResponse, task_info: TaskInfo | None = None) -> Result:
    """Pick the right parser from the reply's content (and the task's declared kind as a tie-breaker)."""
    task = response.task
    labels = task_info.label_ids if task_info and task_info.label_ids else None
    payload = response.json
    if response.file_data is not None:
        name = response.file_name or ""
        if name.endswith(".seg.nrrd"):
            return parse_segmentation(response.file_data, payload, task, labels, name)
        if not response.file_data.startswith(b"NRRD"):
            raise OrthoFMFormatError(
                f"Task '{task}' returned a '{name}' file; the extension reads NRRD results. Ask for "
                "result_extension '.nrrd' in the task parameters.")
        image = read_nrrd(response.file_data, source=f"{task} result")
        declared = str(payload.get("result_kind", "")).lower() or (task_info.kind if task_info else "")
        if np.issubdtype(image.array.dtype, np.floating) and declared != "segmentation":
            return parse_heatmap(response.file_data, payload, task)
        if declared == "heatmap":
            return parse_heatmap(response.file_data, payload, task)
        return parse_segmentation(response.file_data, payload, task, labels, name)
    inner = payload.get("result") if isinstance(payload.get("result"), dict) else payload
    declared_kind = str(payload.get("result_kind", "")).lower()
    if declared_kind == "embedding":
        return parse_embedding(payload, task)
    if "prediction" in payload or "probabilities" in payload or (task_info and task_info.kind == "classification"):
        return parse_classification(payload, task, labels)
    if any(k in inner for k in ("embedding", "features", "vector")):
        return parse_embedding(payload, task)
    return OtherResult(task=task, raw=payload)
