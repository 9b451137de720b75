"""ViT-S/16 (DINOv3 family, the default OrthoFM backbone) forward throughput on this CPU.

For 224 and 512 inputs, in float32, in bfloat16 with the whole model cast (``.to(torch.bfloat16)``) and in
bfloat16 autocast over float32 weights (``bf16_autocast``: the path ``orthofm`` and the app use, because its
features stay within 0.3 % of float32 where the whole-model cast drifts by about 1 %), batch 8: images/s and achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on the real
forward), divided by the matmul peak of the same dtype measured in the same process by
``bench_matmul``. The ratio says how much of the machine a backbone forward uses; it is comparable
across machines and load levels in a way raw images/s are not.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from orthofm.utils.runtime import configure_threads

ARCH = "vit_small_patch16_dinov3_qkvb"
SIZES = (224, 512)
# label -> (weight / input dtype, autocast to bf16?)
VARIANTS = {"fp32": (torch.float32, False), "bf16": (torch.bfloat16, False), "bf16_autocast": (torch.float32, True)}
BATCH = 8
REPEATS = 3


def _matmul_gflops(dtype: torch.dtype) -> float:
    """``bench_matmul.matmul_gflops`` (cached per process), also when this file runs as a script."""
    try:
        from benchmarks.bench_matmul import matmul_gflops
    except ImportError:
        path = Path(__file__).with_name("bench_matmul.py")
        spec = importlib.util.spec_from_file_location("benchmarks.bench_matmul", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        matmul_gflops = module.matmul_gflops
    return matmul_gflops(dtype)


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one ``forward_features`` call (matmuls, convolutions, attention), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.forward_features(x)
    return float(counter.get_total_flops())


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int = REPEATS,
                 autocast: bool = False) -> tuple[list[float], float]:
    """Wall seconds per forward of the batch ``x`` (one warm-up, then ``repeats`` timed runs), and the
    process CPU seconds those runs used: CPU/wall far below the thread count means a contended machine."""
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model.forward_features(x)
        cpu = time.process_time()
        for _ in range(repeats):
            start = time.perf_counter()
            model.forward_features(x)
            times.append(time.perf_counter() - start)
        cpu = time.process_time() - cpu
    return times, cpu


def run() -> list[dict]:
    from orthofm.models import create_backbone

    threads = configure_threads()
    rows = []
    base = create_backbone(ARCH, img_size=224).eval()
    for size in SIZES:
        x32 = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
        flops = forward_flops(base, x32[:1]) * BATCH
        for label, (dtype, autocast) in VARIANTS.items():
            model = base if dtype == torch.float32 else create_backbone(ARCH, img_size=224).eval().to(dtype)
            times, cpu = time_forward(model, x32.to(dtype), autocast=autocast)
            sec = statistics.median(times)
            share = cpu / (sum(times) * threads)
            achieved = flops / sec / 1e9
            peak = _matmul_gflops(torch.bfloat16 if autocast else dtype)
            spread = f"{min(times):.2f}-{max(times):.2f} s"
            rows.append({
                "name": f"vits16_{size}_{label}_throughput",
                "value": round(BATCH / sec, 2),
                "unit": "images/s",
                "reference": None,
                "ratio": None,
                "notes": f"{ARCH} forward_features, batch {BATCH}, {size}x{size}, {label}; median of {REPEATS} "
                         f"({spread} per batch); {threads} threads, CPU share {share:.0%} (process CPU time / "
                         "(wall x threads); low = machine shared with other work)",
            })
            rows.append({
                "name": f"vits16_{size}_{label}_gflops",
                "value": round(achieved, 1),
                "unit": "GFLOP/s",
                "reference": round(peak, 1),
                "ratio": round(achieved / peak, 3),
                "notes": f"{flops / BATCH / 1e9:.2f} GFLOP per image (torch flop counter); reference = {label} "
                         f"matmul peak measured in the same run (bench_matmul)",
            })
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
