"""Inference engines for the frozen backbone, side by side: which one ``orthofm`` should use by default.

The default model's ``forward_features`` at 224 px, batch 1 (an annotator's click) and batch 8 (batch
embedding), through: torch eager float32; torch eager with bf16 autocast; ``torch.compile`` (inductor) with
bf16 autocast; and ``orthofm``'s own dispatch (``orthofm.heads.runtime.forward_features`` with the inference
dtype: OpenVINO with a bf16 hint where it is installed and the CPU has bf16, see
``orthofm.models.openvino_engine``). Each row's ratio is its speed-up over torch eager bf16 autocast, timed
in alternation in this process; each row's notes give the relative L2 error of its patch tokens against
float32. ``default_engine_224_b8_gflops`` is the product's batch-embedding path as a share of the bf16
matmul peak measured in the same run (issue 11's >= 50 % target).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from orthofm.utils.runtime import configure_threads

MODEL = Path(__file__).resolve().parents[1] / "monailabel_app" / "model" / "orthofm_vits16"
BATCHES = (1, 8)
REPEATS = 7


def _rel(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    return float((out["patches"].float() - ref["patches"]).norm() / ref["patches"].norm())


def run() -> list[dict]:
    from benchmarks.bench_matmul import matmul_gflops
    from benchmarks.bench_models import forward_flops
    from orthofm.heads.runtime import forward_features, inference_dtype, inference_engine
    from orthofm.models import load_backbone

    threads = configure_threads()
    bb = load_backbone(MODEL).eval()
    dtype = inference_dtype()
    engine = inference_engine(dtype)
    compiled = torch.compile(bb.forward_features)
    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        paths: dict[str, Callable[[], dict]] = {
            "torch_fp32": lambda x=x: bb.forward_features(x),
            "torch_bf16_autocast": lambda x=x: _autocast(bb.forward_features, x),
            "torch_compile_bf16_autocast": lambda x=x: _autocast(compiled, x),
            "default_engine": lambda x=x: forward_features(bb, x, dtype),
        }
        with torch.inference_mode():
            ref = {k: v.float() for k, v in bb.forward_features(x).items()}
            errors, seconds = {}, {name: [] for name in paths}
            for name, fn in paths.items():  # warm-up: compilation, conversion (cached on disk), allocator
                for _ in range(2):
                    errors[name] = _rel(fn(), ref)
            for _ in range(REPEATS):
                for name, fn in paths.items():  # alternation: foreign load hits every path alike
                    start = time.perf_counter()
                    fn()
                    seconds[name].append(time.perf_counter() - start)
        med = {name: statistics.median(v) for name, v in seconds.items()}
        for name in paths:
            label = f"{name} ({engine}, {str(dtype).removeprefix('torch.')})" if name == "default_engine" else name
            rows.append({
                "name": f"{name}_224_b{batch}_ms", "value": round(med[name] * 1000, 1), "unit": "ms",
                "reference": round(med["torch_bf16_autocast"] * 1000, 1),
                "ratio": round(med[name] / med["torch_bf16_autocast"], 3),
                "notes": f"{label}: forward_features, batch {batch}, 224 px, median of {REPEATS}; reference = torch eager "
                         f"bf16 autocast; patch tokens {errors[name]:.2%} from float32; {threads} threads",
            })
        if batch == 8:
            flops = forward_flops(bb, x[:1]) * batch
            peak = matmul_gflops(torch.bfloat16)
            achieved = flops / med["default_engine"] / 1e9
            rows.append({
                "name": "default_engine_224_b8_gflops", "value": round(achieved, 1), "unit": "GFLOP/s",
                "reference": round(peak, 1), "ratio": round(achieved / peak, 3),
                "notes": f"the product's batch-embedding path ({engine}, {str(dtype).removeprefix('torch.')}); "
                         "reference = bf16 matmul peak measured in the same run (bench_matmul)",
            })
    return rows


def _autocast(fn: Callable[[torch.Tensor], dict], x: torch.Tensor) -> dict:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn(x)


if __name__ == "__main__":
    for row in run():
        print(row)
