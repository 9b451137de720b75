"""Heatmap latency per radiograph and per MRI volume, relative to the backbone's own forward pass.

``ratio`` = end-to-end ``HeatmapEngine.run`` time (preparation, scores, smoothing, inverse mapping to the
original grid, regions) / one ``forward_features`` call on the same prepared canvas; for the MRI volume
the reference is the forward passes of all its slices. Forward and heatmap runs are timed in alternation,
so foreign load on the shared CPU hits both. Patch kNN is designed to stay under 1.5 forward passes: it
reuses the forward's patch tokens and searches a coreset bank with an exact faiss inner-product index.

Backbone: the shipped default model (monailabel_app/model/orthofm_vits16) with its knee bank when present;
otherwise a randomly initialised ViT-S/16 with the default MAE decoder (same architecture, so the same
latency) and a bank of ~4,100 patches built from real KL 0 knees (the size of the shipped bank).
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import torch

from orthofm.heatmaps import BankBuildConfig, HeatmapEngine, NormalBank, build_bank, default_bank_path
from orthofm.heatmaps.inputs import read_quietly
from orthofm.utils.runtime import configure_threads

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "monailabel_app" / "model" / "orthofm_vits16"
SHARED = REPO.parent / "shared" / "data"
REPEATS = 5
BANK_IMAGES = 21  # 21 x 196 = 4,116 patches, about the shipped knee bank (4,096)


def _backbone_and_bank() -> tuple[torch.nn.Module, NormalBank, str]:
    from orthofm.models import (
        BackboneConfig,
        MAEDecoderConfig,
        PreprocessConfig,
        backbone_from_config,
        load_backbone,
    )

    if DEFAULT_MODEL.is_dir() and default_bank_path(DEFAULT_MODEL, "knee") is not None:
        bb = load_backbone(DEFAULT_MODEL)
        if bb.has_mae_decoder:
            return (
                bb,
                NormalBank.load(default_bank_path(DEFAULT_MODEL, "knee")),
                "default model + shipped knee bank",
            )
    torch.manual_seed(0)
    bb = backbone_from_config(
        BackboneConfig(
            arch="vit_small_patch16_dinov3_qkvb",
            preprocess=PreprocessConfig(mean=(0.5,) * 3, std=(0.25,) * 3),
            mae_decoder=MAEDecoderConfig(),
        )
    ).eval()
    normals = sorted((SHARED / "knee_kl" / "train" / "0").glob("*.png"))[: BANK_IMAGES + 3]
    bank = build_bank(bb, normals, BankBuildConfig(coreset_ratio=1.0, calibration_fraction=3 / len(normals)))
    return bb, bank, "random-init ViT-S/16 + MAE decoder, bank of real KL0 knees"


def _cases() -> dict[str, object]:
    import pydicom.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "knee_224": read_quietly(min((SHARED / "knee_kl" / "val" / "3").glob("*.png"))),
            "wrist_727x494": read_quietly(next((SHARED / "wrist_xray").glob("*.png"))),
            "cr_1760": read_quietly(pydicom.data.get_testdata_file("RG3_UNCR.dcm")),
            "mri_24x512x512": read_quietly(SHARED / "knee_mri_dess"),
        }


@torch.no_grad()
def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run() -> list[dict]:
    threads = configure_threads()
    bb, bank, source = _backbone_and_bank()
    engines = {m: HeatmapEngine(bb, m, bank) for m in ("patchknn", "recon", "both")}
    rows = []
    for case, record in _cases().items():
        prepared = engines["patchknn"].prepare(record)
        x = torch.stack([p.tensor for p in prepared])
        batch = engines["patchknn"].config.batch_size

        def forward(x: torch.Tensor = x, batch: int = batch) -> None:
            for i in range(0, x.shape[0], batch):
                bb.forward_features(x[i : i + batch])

        for engine in engines.values():  # warm-up: allocator, faiss index, lazy imports
            engine.run(record)
        forward()
        samples: dict[str, list[float]] = {"forward": [], **{m: [] for m in engines}}
        for _ in range(REPEATS):
            samples["forward"].append(_timed(forward))
            for m, engine in engines.items():
                samples[m].append(_timed(lambda e=engine, r=record: e.run(r)))
        ref = statistics.median(samples["forward"])
        what = f"{x.shape[0]} slices" if x.shape[0] > 1 else "1 image"
        for m in engines:
            value = statistics.median(samples[m])
            rows.append({
                "name": f"heatmap_{m}_{case}",
                "value": round(value * 1000, 1),
                "unit": "ms",
                "reference": round(ref * 1000, 1),
                "ratio": round(value / ref, 2),
                "notes": f"HeatmapEngine.run end to end on {record.array.shape} ({what}); "
                f"reference = forward_features of the prepared canvas(es); median of {REPEATS}, "
                f"interleaved; {source}; {threads} threads"
                         + ("; target ratio < 1.5" if m == "patchknn" else ""),
                "higher_is_better": False,
            })  # fmt: skip
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
