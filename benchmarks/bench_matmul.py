"""Peak matmul throughput of this CPU in float32 and bfloat16: the yardstick for every other benchmark.

A model's speed on a shared 2-core machine says little on its own; divided by what the same CPU does on a
plain matmul at the same moment it becomes comparable across machines and days. Other benches import
``matmul_gflops(dtype)`` (measured once per process) and report ``ratio = achieved / peak``. The two dtypes
are timed in alternation, so a burst of foreign load hits both and their ratio stays meaningful.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch

from orthofm.utils.runtime import configure_threads

SIZES = (512, 1024, 2048)
DTYPES = (torch.float32, torch.bfloat16)
REPEATS = 9
SAMPLE_SECONDS = 0.02  # each timing batches enough products to last about this long


class _Timer:
    """One n x n @ n x n product in one dtype, timed in batches long enough for the clock."""

    def __init__(self, n: int, dtype: torch.dtype) -> None:
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=gen).to(dtype)
        self.b = torch.randn(n, n, generator=gen).to(dtype)
        self.out = torch.empty(n, n, dtype=dtype)
        self.flops = 2.0 * n**3
        torch.mm(self.a, self.b, out=self.out)  # warm-up: kernel selection, page faults
        start = time.perf_counter()
        torch.mm(self.a, self.b, out=self.out)
        self.inner = max(1, int(SAMPLE_SECONDS / max(time.perf_counter() - start, 1e-6)))

    def gflops(self) -> float:
        start = time.perf_counter()
        for _ in range(self.inner):
            torch.mm(self.a, self.b, out=self.out)
        return self.inner * self.flops / (time.perf_counter() - start) / 1e9


def measure(sizes: tuple[int, ...] = SIZES, dtypes: tuple[torch.dtype, ...] = DTYPES,
            repeats: int = REPEATS) -> dict[torch.dtype, dict[int, float]]:
    """Median GFLOP/s per dtype and size; samples of the dtypes are interleaved."""
    result: dict[torch.dtype, dict[int, float]] = {dtype: {} for dtype in dtypes}
    for n in sizes:
        timers = {dtype: _Timer(n, dtype) for dtype in dtypes}
        samples: dict[torch.dtype, list[float]] = {dtype: [] for dtype in dtypes}
        for _ in range(repeats):
            for dtype, timer in timers.items():
                samples[dtype].append(timer.gflops())
        for dtype in dtypes:
            result[dtype][n] = statistics.median(samples[dtype])
    return result


@functools.cache
def _sweep() -> dict[torch.dtype, dict[int, float]]:
    return measure()


def matmul_sweep(dtype: torch.dtype) -> dict[int, float]:
    """Median GFLOP/s per matrix size (``SIZES``) for ``dtype``; measured once per process."""
    return _sweep()[dtype]


def matmul_gflops(dtype: torch.dtype = torch.float32) -> float:
    """Peak GFLOP/s over ``SIZES`` (each a median of repeats): the reference other benches divide by."""
    return max(matmul_sweep(dtype).values())


def run() -> list[dict]:
    threads = configure_threads()
    fp32, bf16 = matmul_sweep(torch.float32), matmul_sweep(torch.bfloat16)
    fp32_peak, bf16_peak = max(fp32.values()), max(bf16.values())
    rows = []
    for label, sweep, peak in (("fp32", fp32, fp32_peak), ("bf16", bf16, bf16_peak)):
        is_bf16 = label == "bf16"
        best_n = max(sweep, key=sweep.get)
        per_size = ", ".join(f"{n}: {g:.0f}" for n, g in sweep.items())
        notes = (f"torch.mm n x n, best n={best_n}, median of {REPEATS} per size, fp32/bf16 interleaved "
                 f"(GFLOP/s by n: {per_size}); {threads} threads")
        if is_bf16:
            notes += "; reference = fp32 peak, ratio = bf16 speed-up"
        rows.append({
            "name": f"matmul_{label}_peak",
            "value": round(peak, 1),
            "unit": "GFLOP/s",
            "reference": round(fp32_peak, 1) if is_bf16 else None,
            "ratio": round(bf16_peak / fp32_peak, 2) if is_bf16 else None,
            "notes": notes,
            "higher_is_better": True,
        })  # fmt: skip
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
