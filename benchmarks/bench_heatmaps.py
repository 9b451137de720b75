"""Heatmap latency per radiograph and per MRI volume, relative to the backbone's own forward pass.

``ratio`` = end-to-end ``HeatmapEngine.run`` time (preparation, scores, smoothing, inverse mapping to the
original grid, regions) / one ``forward_features`` call on the same prepared canvas, in the engine's own
precision and engine (``orthofm.heads.runtime.forward_features``, as in the product); for the MRI volume the reference is the
forward passes of all its slices. Forward and heatmap runs are timed in alternation,
so foreign load on the shared CPU hits both. Patch kNN is designed to stay under 1.5 forward passes: it
reuses the forward's patch tokens and searches a coreset bank with an exact faiss inner-product index.
Each row's notes also give the median time per stage of ``HeatmapEngine.run`` (prepare, forward, search,
recon, smooth, to_grid, regions; from ``result.info["timings_ms"]``), which is where to look when a ratio
moves. Run as a script it prints the ratios side by side (case x method) and the stage table.

Timings on a shared, loaded CPU are noisy; the ratios are the meaningful part (forward and heatmap run in
alternation, so foreign load hits both) and should be regenerated on a quiet machine before quoting.

Backbone: the shipped default model (monailabel_app/model/orthofm_vits16) with its knee bank when present;
otherwise a randomly initialised ViT-S/16 with the default MAE decoder (same architecture, so the same
latency) and a bank of ~4,100 patches built from real KL 0 knees (the size of the shipped bank).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from orthofm.heads.runtime import forward_features
from orthofm.heatmaps import BankBuildConfig, HeatmapEngine, NormalBank, build_bank, default_bank_path
from orthofm.heatmaps.inputs import read_quietly
from orthofm.utils.runtime import configure_threads

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "monailabel_app" / "model" / "orthofm_vits16"
SHARED = REPO.parent / "shared" / "data"
REPEATS = 15
MRI_REPEATS = 3  # one MRI round (forward + 3 methods) is ~100 forward passes of a radiograph
STAGES = ("prepare", "forward", "search", "recon", "smooth", "to_grid", "regions")
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


CASES = ("knee_224", "wrist_727x494", "cr_1760", "mri_24x512x512")
METHODS = ("patchknn", "recon", "both")


def _cases(names: Sequence[str] = CASES) -> dict[str, object]:
    import pydicom.data

    sources = {
        "knee_224": lambda: min((SHARED / "knee_kl" / "val" / "3").glob("*.png")),
        "wrist_727x494": lambda: next((SHARED / "wrist_xray").glob("*.png")),
        "cr_1760": lambda: pydicom.data.get_testdata_file("RG3_UNCR.dcm"),
        "mri_24x512x512": lambda: SHARED / "knee_mri_dess",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: read_quietly(sources[name]()) for name in names}


@torch.no_grad()
def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(
    cases: Sequence[str] = CASES,
    methods: Sequence[str] = METHODS,
    repeats: int = REPEATS,
    mri_repeats: int = MRI_REPEATS,
) -> list[dict]:
    """Benchmark rows (``run_all`` calls it with the defaults: every case and method)."""
    threads = configure_threads()
    bb, bank, source = _backbone_and_bank()
    engines = {m: HeatmapEngine(bb, m, bank) for m in methods}
    rows = []
    for case, record in _cases(cases).items():
        first = next(iter(engines.values()))
        prepared = first.prepare(record)
        x = torch.stack([p.tensor for p in prepared])
        batch = first.config.batch_size
        n_repeats = mri_repeats if x.shape[0] > 1 else repeats

        def forward(x: torch.Tensor = x, batch: int = batch, dtype: torch.dtype = first.inputs.dtype) -> None:
            with torch.inference_mode():  # the engine's own precision and engine (OpenVINO where installed)
                for i in range(0, x.shape[0], batch):
                    forward_features(bb, x[i : i + batch], dtype)

        if not rows or x.shape[0] == 1:  # warm-up: allocator, faiss index, lazy imports (a volume
            for engine in engines.values():  # after a radiograph skips it: one round is ~100 forwards)
                engine.run(record)
            forward()
        samples: dict[str, list[float]] = {"forward": [], **{m: [] for m in engines}}
        stages: dict[str, dict[str, list[float]]] = {m: {} for m in engines}
        for _ in range(n_repeats):
            samples["forward"].append(_timed(forward))
            for m, engine in engines.items():
                start = time.perf_counter()
                result = engine.run(record)
                samples[m].append(time.perf_counter() - start)
                for stage, ms in result.info["timings_ms"].items():
                    stages[m].setdefault(stage, []).append(ms)
        ref = statistics.median(samples["forward"])
        what = f"{x.shape[0]} slices" if x.shape[0] > 1 else "1 image"
        for m in engines:
            value = statistics.median(samples[m])
            stage_ms = {k: round(statistics.median(v), 1) for k, v in stages[m].items()}
            rows.append({
                "name": f"heatmap_{m}_{case}",
                "value": round(value * 1000, 1),
                "unit": "ms",
                "reference": round(ref * 1000, 1),
                "ratio": round(value / ref, 2),
                "notes": f"HeatmapEngine.run end to end on {record.array.shape} ({what}); "
                f"reference = forward_features of the prepared canvas(es); median of {n_repeats}, "
                f"interleaved; {source}; {threads} threads; stages (median ms): "
                + ", ".join(f"{k} {v}" for k, v in stage_ms.items())
                + ("; target ratio < 1.5" if m == "patchknn" else ""),
                "higher_is_better": False,
                "stages_ms": stage_ms,
            })  # fmt: skip
    return rows


def side_by_side(rows: list[dict]) -> str:
    """Markdown: ratio per case (rows) and method (columns), then the stage times of every row."""
    cases = list(dict.fromkeys(r["name"].split("_", 2)[2] for r in rows))
    methods = list(dict.fromkeys(r["name"].split("_", 2)[1] for r in rows))
    by = {(r["name"].split("_", 2)[2], r["name"].split("_", 2)[1]): r for r in rows}
    lines = ["| case | forward (ms) | " + " | ".join(methods) + " |", "|---" * (len(methods) + 2) + "|"]
    for c in cases:
        ref = by[(c, methods[0])]["reference"]
        lines.append(f"| {c} | {ref} | " + " | ".join(f"{by[(c, m)]['ratio']:.2f}" for m in methods) + " |")
    lines += ["", "| case | method | total (ms) | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 3) + "|"]
    for c in cases:
        for m in methods:
            r = by[(c, m)]
            cells = " | ".join(str(r["stages_ms"].get(s, "")) for s in STAGES)
            lines.append(f"| {c} | {m} | {r['value']} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {CASES}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS}")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--mri-repeats", dest="mri_repeats", type=int, default=MRI_REPEATS)
    a = parser.parse_args()
    rows = run(a.cases.split(","), a.methods.split(","), a.repeats, a.mri_repeats)
    for row in rows:
        print(row)
    print()
    print(side_by_side(rows))
