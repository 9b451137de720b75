"""Trained heads as folders a user keeps: ``head.safetensors`` (arrays, never pickle) + ``card.json``.

The card says what the head is (task, classes, ordinal, kind and settings), what it sits on (backbone id
and feature definition), what it learned from (labels, fraction, seed, counts) and how good it is
(metrics, calibration temperature). Both files are written atomically, the card last, so a folder with a
card is always complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from orthofm import __version__
from orthofm.utils.atomic import atomic_write_bytes, atomic_write_text
from orthofm.utils.jsonable import json_default

from .base import FeatureHead
from .calibration import softmax
from .features import FEATURE_DEFINITION

__all__ = ["CARD_FORMAT", "HeadCard", "TrainedHead", "head_class", "load_head"]

CARD_FORMAT = "orthofm-head/1"
WEIGHTS_FILE = "head.safetensors"
CARD_FILE = "card.json"


def head_class(kind: str) -> type[FeatureHead]:
    """The head class saved under ``kind`` (``probe``, ``knn``, ``mlp``, ``finetune``)."""
    from .finetune import FinetuneHead
    from .knn import KNNHead
    from .mlp import MLPHead
    from .probe import LogisticProbe

    kinds = {c.kind: c for c in (LogisticProbe, KNNHead, MLPHead, FinetuneHead)}
    if kind not in kinds:
        raise ValueError(f"unknown head kind {kind!r}; known: {sorted(kinds)}")
    return kinds[kind]


@dataclass
class HeadCard:
    """Everything about a trained head except its arrays (serialised as ``card.json``)."""

    task: str
    kind: str
    classes: list[str]
    ordinal: bool
    backbone: dict[str, Any]
    decode: str = "argmax"
    features: str = FEATURE_DEFINITION
    label_fraction: float = 1.0
    data: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    orthofm_version: str = __version__
    format: str = CARD_FORMAT

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=json_default)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadCard:
        if d.get("format") != CARD_FORMAT:
            raise ValueError(f"not an OrthoFM head card (format {d.get('format')!r}, expected {CARD_FORMAT!r})")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class TrainedHead:
    """A fitted head + its card: calibrated probabilities, decoded labels and expected grades from features."""

    def __init__(self, head: FeatureHead, card: HeadCard) -> None:
        if head.n_classes != len(card.classes):
            raise ValueError(f"head has {head.n_classes} outputs but the card lists {len(card.classes)} classes")
        if card.decode not in ("argmax", "expected"):
            raise ValueError(f"decode must be 'argmax' or 'expected', got {card.decode!r}")
        self.head = head
        self.card = card

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, K) calibrated class probabilities."""
        return softmax(self.head.logits(x), self.card.temperature)

    def decode(self, probs: np.ndarray) -> np.ndarray:
        """Class index per row: arg-max, or the rounded expected grade for ``decode='expected'``."""
        if self.card.decode == "expected":
            grade = probs @ np.arange(probs.shape[1], dtype=np.float64)
            return np.clip(np.rint(grade), 0, probs.shape[1] - 1).astype(np.int64)
        return probs.argmax(axis=1)

    def feature_backbone(self, base: Any) -> Any:
        """The backbone whose features this head reads: ``base`` itself, or (fine-tuned heads) a copy of it with
        the head's tuned blocks. Every caller that embeds images for this head must use it."""
        tuned = getattr(self.head, "backbone_for", None)
        return tuned(base) if tuned is not None else base

    @property
    def reads_frozen_features(self) -> bool:
        """True when the head reads the base backbone's own features (probe, kNN, MLP), not tuned ones."""
        return getattr(self.head, "backbone_for", None) is None

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.decode(self.predict_proba(x))

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``head.safetensors`` then ``card.json`` (each atomically) into ``folder`` (created)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v) for k, v in self.head.arrays().items()}
        atomic_write_bytes(out / WEIGHTS_FILE, st_save(arrays, metadata={"format": CARD_FORMAT,
                                                                          "kind": self.card.kind}))
        self.card.params = self.head.params()
        atomic_write_text(out / CARD_FILE, self.card.to_json() + "\n")
        return out


def load_head(folder: str | os.PathLike[str]) -> TrainedHead:
    """Load a head folder written by ``TrainedHead.save`` (raises a clear error on anything else)."""
    root = Path(folder)
    card_path, weights_path = root / CARD_FILE, root / WEIGHTS_FILE
    if not card_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{str(root)!r} is not a head folder (needs {CARD_FILE} and {WEIGHTS_FILE})")
    try:
        card = HeadCard.from_dict(json.loads(card_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{str(card_path)!r} is not a valid head card: {exc}") from exc
    arrays = st_load(weights_path.read_bytes())
    head = head_class(card.kind).restore(len(card.classes), card.params, arrays)
    head.ordinal = card.ordinal
    return TrainedHead(head, card)
