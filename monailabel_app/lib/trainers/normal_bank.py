"""Build this project's normal bank for ``abnormality`` from images labelled normal.

Normal = a JSON class label (tag ``cls``) of ``"normal"`` or KL grade 0. The bank (``orthofm.heatmaps``: patch
tokens, greedy coreset, calibration on held-out normals when there are enough) is published atomically under
``<studies>/.orthofm/banks/<anatomy>`` and used by the next heatmap request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import OrthoTrainTask, say
from .classification import class_labels, kl_class

NORMAL = {"normal", "KL0"}


class NormalBankTrainer(OrthoTrainTask):
    def __init__(self, runtime: Any, anatomy: str = "knee", label_tag: str = "cls") -> None:
        super().__init__(runtime, anatomy, f"Build the {anatomy} normal bank for abnormality heatmaps from images "
                         f"labelled normal (tag {label_tag})",
                         {"label_tag": label_tag, "coreset_ratio": 0.25, "min_images": 2, "anatomy": anatomy},
                         root="banks")

    def fit(self, request: dict, datastore: Any, out: Path) -> dict:
        from orthofm.heatmaps import BankBuildConfig, build_bank

        tag = str(request.get("label_tag", "cls"))
        raw = class_labels(datastore, tag)
        normal = sorted(i for i, v in raw.items()
                        if str(v).strip().lower() == "normal" or kl_class(v) == "KL0")
        need = int(request.get("min_images", 2))
        if len(normal) < need:
            raise ValueError(f"need at least {need} images labelled normal (or KL0) under tag {tag!r}; have "
                             f"{len(normal)}")
        paths = [datastore.get_image_uri(i) for i in normal]
        say(f"building the {self.task} normal bank from {len(paths)} images")
        cfg = BankBuildConfig(anatomy=self.task, coreset_ratio=float(request.get("coreset_ratio", 0.25)),
                              calibration_fraction=0.2 if len(paths) >= 10 else 0.0, seed=0)
        bank = build_bank(self.runtime.backbone, paths, cfg)
        staging = out / "bank"
        bank.save(staging)
        for p in staging.iterdir():  # the bank's files sit directly in the published version folder
            p.rename(out / p.name)
        staging.rmdir()
        say(f"bank: {len(bank)} patches")
        return {"n_images": len(paths), "n_patches": len(bank), "anatomy": self.task}
