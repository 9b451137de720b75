"""Peak matmul throughput of this CPU in float32 and bfloat16: the yardstick for every other benchmark.

A model's speed on a shared 2-core machine says little on its own; divided by what the same CPU does on a
plain matmul at the same moment it becomes comparable across machines and days. Other benches import
``matmul_gflops(dtype)`` (cached per process) and report ``ratio = achieved / peak``.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch

from orthofm.utils.runtime import configure_threads

SIZES = (512, 1024, 2048)
REPEATS = 9
MIN_SECONDS_PER_SIZE = 0.5


def _median_gflops(n: int, dtype: torch.dtype, repeats: int) -> float:
    """Median GFLOP/s of ``repeats`` timed n x n @ n x n products (after a warm-up)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: oneDNN/BLAS kernel selection, page faults
    flops = 2.0 * n**3
    # Small sizes finish in microseconds: batch several products per timing so the clock resolution and
    # Python overhead do not dominate.
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    inner = max(1, int(0.02 / max(time.perf_counter() - start, 1e-6)))
    samples = []
    deadline = time.perf_counter() + MIN_SECONDS_PER_SIZE
    while len(samples) < repeats or (time.perf_counter() < deadline and len(samples) < 4 * repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        samples.append(inner * flops / (time.perf_counter() - start) / 1e9)
    return statistics.median(samples)


@functools.cache
def matmul_sweep(dtype: torch.dtype, sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS) -> dict[int, float]:
    """Median GFLOP/s per matrix size for ``dtype`` (cached: measured once per process)."""
    return {n: _median_gflops(n, dtype, repeats) for n in sizes}


def matmul_gflops(dtype: torch.dtype = torch.float32) -> float:
    """Peak GFLOP/s over ``SIZES`` (each a median of repeats): the reference other benches divide by."""
    return max(matmul_sweep(dtype).values())


def run() -> list[dict]:
    threads = configure_threads()
    rows = []
    fp32 = matmul_sweep(torch.float32)
    bf16 = matmul_sweep(torch.bfloat16)
    fp32_peak, bf16_peak = max(fp32.values()), max(bf16.values())
    for label, sweep, peak in (("fp32", fp32, fp32_peak), ("bf16", bf16, bf16_peak)):
        best_n = max(sweep, key=sweep.get)
        per_size = ", ".join(f"{n}: {g:.0f}" for n, g in sweep.items())
        is_bf16 = label == "bf16"
        rows.append({
            "name": f"matmul_{label}_peak",
            "value": round(peak, 1),
            "unit": "GFLOP/s",
            "reference": round(fp32_peak, 1) if is_bf16 else None,
            "ratio": round(bf16_peak / fp32_peak, 2) if is_bf16 else None,
            "notes": (f"torch.mm n x n, best n={best_n}, median of >= {REPEATS} per size "
                      f"(GFLOP/s by n: {per_size}); {threads} threads"
                      + ("; reference = fp32 peak, ratio = bf16 speed-up" if is_bf16 else "")),
            "higher_is_better": True,
        })  # fmt: skip
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
