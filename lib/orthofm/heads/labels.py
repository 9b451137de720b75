"""Labelled image sets from a CSV or a folder-per-class tree, with the patient of every image.

Every split the project makes is by patient, so the patient id travels with each label from the moment it
is read. For the knee KL data (``<OAI patient id><L|R>.png``) the patient is the file stem without the
trailing side letter; a CSV may instead give it explicitly in a ``patient`` column.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "LabeledSet", "list_images", "load_labels", "patient_id_from_path", "sort_classes"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz", ".nrrd", ".mha")
_SIDE = re.compile(r"^(.+?)[_\-]?([LR])$")


def patient_id_from_path(path: str | Path) -> str:
    """Patient of an image file: the stem without a trailing ``L``/``R`` side letter (``9003175L`` -> ``9003175``)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".seg.nrrd"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = Path(name).stem
    match = _SIDE.match(name)
    return match.group(1) if match else name


def sort_classes(names: Sequence[str]) -> list[str]:
    """Numeric class names in numeric order (``2`` before ``10``), others alphabetically."""
    unique = sorted(set(names))
    if all(_is_int(n) for n in unique):
        return sorted(unique, key=int)
    return unique


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text) is not None


def list_images(folder: str | Path) -> list[Path]:
    """All image files below ``folder`` (recursive, sorted); a DICOM series folder counts per file."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


@dataclass
class LabeledSet:
    """Images with one class label each and the patient each image belongs to."""

    paths: list[Path]
    labels: list[str]
    patients: list[str]
    classes: list[str]
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.paths) == len(self.labels) == len(self.patients)):
            raise ValueError("paths, labels and patients must have the same length")
        unknown = sorted(set(self.labels) - set(self.classes))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the classes {self.classes}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def y(self) -> np.ndarray:
        """Integer class index per image (position in ``classes``)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.asarray([index[label] for label in self.labels], dtype=np.int64)

    @property
    def is_ordinal_like(self) -> bool:
        """Consecutive integer class names (KL 0-4): a natural ordinal scale."""
        if not all(_is_int(c) for c in self.classes):
            return False
        values = [int(c) for c in self.classes]
        return values == list(range(values[0], values[0] + len(values)))

    def subset(self, index: Sequence[int] | np.ndarray) -> LabeledSet:
        idx = [int(i) for i in index]
        return LabeledSet(
            paths=[self.paths[i] for i in idx], labels=[self.labels[i] for i in idx],
            patients=[self.patients[i] for i in idx], classes=list(self.classes), source=self.source,
        )


def load_labels(
    source: str | Path,
    *,
    classes: Sequence[str] | None = None,
    patient_fn: Callable[[str | Path], str] = patient_id_from_path,
) -> LabeledSet:
    """Read labels from ``labels.csv`` (columns ``path``, ``label``, optional ``patient``) or a class-folder tree.

    CSV paths are resolved against the CSV's folder. In a folder tree every immediate sub-folder is a class
    and every image below it (recursively) one example. ``classes`` fixes the class order (else sorted).
    """
    src = Path(source)
    if src.is_file():
        paths, labels, patients = _read_csv(src, patient_fn)
    elif src.is_dir():
        paths, labels, patients = _read_folders(src, patient_fn)
    else:
        raise FileNotFoundError(f"labels {str(src)!r} not found: give a labels.csv or a folder with one sub-folder per class")
    if not paths:
        raise ValueError(f"no labelled images found in {str(src)!r}")
    class_list = list(classes) if classes is not None else sort_classes(labels)
    return LabeledSet(paths=paths, labels=labels, patients=patients, classes=class_list, source=str(src))


def _read_csv(path: Path, patient_fn: Callable[[str | Path], str]) -> tuple[list[Path], list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise ValueError(f"{str(path)!r} needs columns 'path' and 'label' (found {reader.fieldnames})")
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    paths, labels, patients = [], [], []
    for n, row in enumerate(rows, start=2):
        if not row["path"] or not row["label"]:
            raise ValueError(f"{str(path)!r} line {n}: empty path or label")
        p = Path(row["path"])
        p = p if p.is_absolute() else path.parent / p
        if not p.exists():
            raise FileNotFoundError(f"{str(path)!r} line {n}: image {str(p)!r} does not exist")
        paths.append(p)
        labels.append(row["label"])
        patients.append(row.get("patient") or patient_fn(p))
    return paths, labels, patients


def _read_folders(root: Path, patient_fn: Callable[[str | Path], str]) -> tuple[list[Path], list[str], list[str]]:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{str(root)!r} has no class sub-folders (expected e.g. {root}/0/*.png, {root}/1/*.png)")
    paths, labels, patients = [], [], []
    for d in class_dirs:
        for p in list_images(d):
            paths.append(p)
            labels.append(d.name)
            patients.append(patient_fn(p))
    return paths, labels, patients
