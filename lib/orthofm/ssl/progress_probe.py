"""Frozen-feature quality while pretraining runs: a logistic probe of the backbone the run would export.

Why: a self-distillation loss can fall for hours while the features a lab cares about do not move (OrthoFM's
own DINO stages, ``docs/pretraining.md``). With ``probe_train`` / ``probe_val`` (folder-per-class labelled
images) and ``probe_every_epochs``, the loop fits the same probe ``orthofm probe-backbone`` uses on the
exported backbone's features (CLS + mean patch, C by patient-grouped CV on ``probe_train``), scores it once
on ``probe_val`` and appends a row to ``probe.csv``, so the run's curve shows what its checkpoints are worth.
The val split only ever scores: choose a checkpoint on it, never report a test split from it.
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

PROBE_CSV = "probe.csv"
COLUMNS = ("step", "epoch", "accuracy", "qwk", "macro_f1", "ece", "seconds")


@dataclass
class ProgressProbe:
    """Labelled sets read once; :meth:`run` embeds them with a given backbone and probes."""

    train_dir: str
    val_dir: str

    def __post_init__(self) -> None:
        from orthofm.heads.labels import load_labels

        self.train = load_labels(self.train_dir)
        self.val = load_labels(self.val_dir, classes=self.train.classes)

    def run(self, backbone: torch.nn.Module, scratch: Path) -> dict[str, float]:
        """Probe metrics of ``backbone`` (a frozen copy; it is put in eval mode). Uses no torch RNG, so a
        run with the probe follows the same loss trajectory as one without it."""
        from orthofm.evaluate.backbone_probe import probe_features
        from orthofm.heads.embeddings import EmbeddingStore

        tic = time.time()
        backbone = backbone.eval().requires_grad_(False)
        folder = Path(tempfile.mkdtemp(prefix="probe-", dir=scratch))
        try:  # features change with every probe: a throwaway store, the product's own embedding path
            store = EmbeddingStore(folder, backbone, progress=False)
            x_train = store.embed_paths(self.train.paths)
            x_val = store.embed_paths(self.val.paths)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        result = probe_features("progress", "cls+meanpatch", x_train, self.train, x_val, self.val)
        metrics = {k: float(result.metrics[k]) for k in ("accuracy", "qwk", "macro_f1", "ece") if k in result.metrics}
        metrics["seconds"] = time.time() - tic
        return metrics


def probe_steps(every_epochs: float, steps_per_epoch: int) -> int:
    """Steps between probes (0 = never)."""
    if every_epochs <= 0:
        return 0
    return max(1, round(every_epochs * steps_per_epoch))


def append_probe_row(path: Path, step: int, epoch: float, metrics: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(COLUMNS)
        writer.writerow([step, f"{epoch:.3f}", *[f"{float(metrics.get(k, float('nan'))):.4f}" for k in COLUMNS[2:]]])
