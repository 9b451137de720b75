"""What a server offers, read from MONAI Label's ``GET /info/``.

The module's task list, class-label choices and train buttons are all built from this, so a server
with other tasks still works: unknown task types are listed and their results shown by content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: How a result is shown in Slicer. Decided from /info here, and again from the reply's content.
KINDS = ("classification", "heatmap", "segmentation", "embedding", "other")

_HEATMAP_WORDS = ("heatmap", "abnormal", "anomaly", "novelty", "saliency", "probability map")
_EMBED_WORDS = ("embedding", "embed", "feature vector")


@dataclass(frozen=True)
class TaskInfo:
    name: str
    type: str
    labels: tuple[str, ...] = ()
    label_ids: dict[str, int] = field(default_factory=dict)
    dimension: int | None = None
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        declared = str(self.config.get("orthofm_output", self.config.get("output_kind", ""))).lower()
        if declared in KINDS:
            return declared
        t = self.type.lower()
        text = f"{self.name} {self.description}".lower()
        if t == "classification":
            return "classification"
        if any(w in text for w in _EMBED_WORDS):
            return "embedding"
        if any(w in text for w in _HEATMAP_WORDS):
            return "heatmap"
        if t in ("segmentation", "deepedit", "deepgrow", "annotation", "scribbles"):
            return "segmentation"
        return "other"

    def label_name(self, index: int) -> str:
        for name, idx in self.label_ids.items():
            if idx == index:
                return name
        return str(index)


@dataclass(frozen=True)
class ServerInfo:
    name: str
    version: str
    description: str
    labels: tuple[str, ...]
    tasks: dict[str, TaskInfo]
    trainers: dict[str, dict[str, Any]]
    strategies: tuple[str, ...]
    raw: dict[str, Any]

    def task(self, name: str) -> TaskInfo:
        if name not in self.tasks:
            offered = ", ".join(sorted(self.tasks)) or "none"
            raise KeyError(f"Task '{name}' is not offered by server '{self.name}' (offered: {offered}).")
        return self.tasks[name]

    def tasks_of_kind(self, kind: str) -> list[TaskInfo]:
        return [t for t in self.tasks.values() if t.kind == kind]


def label_mapping(labels: Any) -> dict[str, int]:
    """MONAI Label sends labels as a list of names or a ``{name: index}`` dict; return the dict."""
    if isinstance(labels, dict):
        out: dict[str, int] = {}
        for key, value in labels.items():
            try:
                out[str(key)] = int(value)
            except (TypeError, ValueError):
                # {index: name} written the other way round
                out[str(value)] = int(key)
        return out
    if isinstance(labels, (list, tuple)):
        return {str(name): i for i, name in enumerate(labels)}
    return {}


def parse_server_info(payload: dict[str, Any]) -> ServerInfo:
    if not isinstance(payload, dict):
        raise TypeError(f"/info reply is not a JSON object: {str(payload)[:200]}")
    tasks: dict[str, TaskInfo] = {}
    for name, info in (payload.get("models") or {}).items():
        info = info or {}
        ids = label_mapping(info.get("labels"))
        tasks[name] = TaskInfo(
            name=name,
            type=str(info.get("type", "others")),
            labels=tuple(sorted(ids, key=ids.__getitem__)),
            label_ids=ids,
            dimension=info.get("dimension"),
            description=str(info.get("description", "")),
            config=dict(info.get("config") or {}),
        )
    trainers = {name: dict((info or {}).get("config") or {}) for name, info in (payload.get("trainers") or {}).items()}
    app_labels = label_mapping(payload.get("labels"))
    return ServerInfo(
        name=str(payload.get("name", "")),
        version=str(payload.get("version", "")),
        description=str(payload.get("description", "")),
        labels=tuple(sorted(app_labels, key=app_labels.__getitem__)),
        tasks=tasks,
        trainers=trainers,
        strategies=tuple((payload.get("strategies") or {}).keys()),
        raw=payload,
    )
