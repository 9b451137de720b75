"""CPU facts and torch settings: how many threads to use and which dtype inference should run in.

On a shared few-core machine torch's default thread count oversubscribes the CPU and latency tails explode,
so every process entry point calls ``configure_threads()`` once. ``best_inference_dtype()`` picks bfloat16
only when the CPU has native bf16 matmul (AVX512-BF16 or AMX), where it is faster than float32; elsewhere
bf16 is emulated and slower. torch is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "BF16_CPU_FLAGS",
    "PRECISION_CHOICES",
    "available_cpus",
    "best_inference_dtype",
    "cache_root",
    "configure_threads",
    "cpu_flags",
    "cpu_model",
    "default_device",
    "env_flag",
    "has_native_bf16",
    "inference_autocast",
    "resolve_precision",
]

# /proc/cpuinfo flags meaning the CPU multiplies bf16 natively (x86: AVX512-BF16 or AMX tiles).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_CPUINFO = Path("/proc/cpuinfo")


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to 1/true/yes/on (case-insensitive)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if not model and key == "model name":
            model = value.strip()
        elif not flags and key in {"flags", "features"}:  # x86 "flags", arm64 "Features"
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        return _parse_cpuinfo(_CPUINFO.read_text(errors="replace"))
    except OSError:  # not Linux
        return "", frozenset()


def cpu_model() -> str:
    """Marketing name of the CPU ("AMD EPYC ..."), or ``platform.processor()`` where /proc is absent."""
    return _cpuinfo()[0] or platform.processor() or "unknown"


def cpu_flags() -> frozenset[str]:
    """ISA feature flags of the CPU as the kernel reports them (empty when unknown)."""
    return _cpuinfo()[1]


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX512-BF16 or AMX-BF16)."""
    return bool(BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags))


def _cgroup_cpu_limit() -> int | None:
    """CPU quota of a container (cgroup v2 ``cpu.max``), rounded up; None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


def available_cpus() -> int:
    """CPUs this process may really use: affinity mask, capped by a container CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(n, limit) if limit else n


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    Order: ``num_threads`` argument, then ``ORTHOFM_NUM_THREADS``, then ``OMP_NUM_THREADS``, then
    ``available_cpus()``.
    """
    import torch

    if num_threads is None:
        for var in ("ORTHOFM_NUM_THREADS", "OMP_NUM_THREADS"):
            raw = os.environ.get(var, "").strip()
            if raw:
                try:
                    num_threads = int(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not a whole number of threads") from None
                break
        else:
            num_threads = available_cpus()
    if num_threads < 1:
        raise ValueError(f"number of threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    limit_blas_threads()
    return num_threads


def limit_blas_threads(num_threads: int | None = None) -> None:
    """Run numpy's and scipy's BLAS (OpenBLAS) on one thread, unless ``ORTHOFM_BLAS_THREADS`` says otherwise.

    Why: torch and OpenVINO do the heavy products; numpy's are small (a CLS matched against a bank, a probe's
    logits). OpenBLAS keeps its worker threads spinning for a while after each call, and on 2 cores a spinning
    thread takes half the machine from the next forward pass: one 1,061 x 384 product made a 3 MP heatmap
    8 ms slower (docs/heatmaps.md, "Latency"). The setting is inherited by child processes.
    """
    if num_threads is None:
        raw = os.environ.get("ORTHOFM_BLAS_THREADS", "").strip()
        try:
            num_threads = int(raw) if raw else 1
        except ValueError:
            raise ValueError(f"ORTHOFM_BLAS_THREADS={raw!r} is not a whole number of threads") from None
    if num_threads < 1:
        raise ValueError(f"number of BLAS threads must be >= 1, got {num_threads}")
    os.environ["OPENBLAS_NUM_THREADS"] = str(num_threads)  # for copies of OpenBLAS loaded later (scipy's)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it; without it BLAS keeps its default
        return
    threadpool_limits(limits=num_threads, user_api="blas")  # the copies already loaded (numpy's)


def best_inference_dtype() -> torch.dtype:
    """bfloat16 on CPUs with native bf16 matmul, else float32; ``ORTHOFM_FORCE_FP32=1`` forces float32."""
    import torch

    if env_flag("ORTHOFM_FORCE_FP32") or not has_native_bf16():
        return torch.float32
    return torch.bfloat16


PRECISION_CHOICES = ("auto", "bf16", "fp32")


def resolve_precision(name: str, device: str | torch.device = "cpu") -> str:
    """A training config's ``precision`` as the one it runs in here: ``"bf16"`` or ``"fp32"``.

    ``"auto"`` means bf16 autocast only where the device multiplies bf16 natively (CPU: AVX512-BF16 or AMX, as
    ``best_inference_dtype``; CUDA: ``torch.cuda.is_bf16_supported()``), else float32. Why not always bf16: on a
    CPU without those instructions bf16 is emulated, and a ViT-S/16 training step (batch 32, 224 px) took 2.9-3.6x as
    long as in float32 (two runs of benchmarks/bench_precision.py on an AVX512 Xeon without bf16).
    """
    if name not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {list(PRECISION_CHOICES)}, got {name!r}")
    if name != "auto":
        return name
    import torch

    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if best_inference_dtype() == torch.bfloat16 else "fp32"


def default_device() -> torch.device:
    """``ORTHOFM_DEVICE`` if set (e.g. ``cpu``, ``cuda:1``), else CUDA when available, else CPU."""
    import torch

    name = os.environ.get("ORTHOFM_DEVICE", "").strip()
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def inference_autocast(device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Iterator[None]:
    """Autocast to ``dtype`` (default ``best_inference_dtype()``) for the block; no-op for float32.

    Matmuls and convolutions run in the low-precision dtype while reductions stay in float32; outputs of
    autocast regions may be bf16, so cast results with ``.float()`` before writing them.
    """
    import torch

    dtype = best_inference_dtype() if dtype is None else dtype
    if dtype == torch.float32:
        yield
        return
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


def cache_root() -> Path:
    """Root of OrthoFM's on-disk caches (embeddings, converted models): ``$ORTHOFM_CACHE`` or ``~/.cache/orthofm``."""
    base = os.environ.get("ORTHOFM_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "orthofm"
