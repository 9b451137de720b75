"""A description of the machine and software a number was measured on (benchmarks, `orthofm env`).

Timings mean little without the CPU, its vector extensions, the thread count, the load at the time and the
library versions, so every benchmark report carries this dict.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from .runtime import available_cpus, best_inference_dtype, cpu_flags, cpu_model, has_native_bf16

__all__ = ["INTERESTING_FLAGS", "LIBRARIES", "describe_machine", "library_versions"]

# Vector / matrix extensions that decide CPU inference speed (x86 names as in /proc/cpuinfo).
INTERESTING_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16",
)  # fmt: skip
LIBRARIES = (
    "orthofm", "torch", "torchvision", "numpy", "monai", "monailabel", "timm", "transformers",
    "pydicom", "itk", "faiss-cpu", "scikit-learn", "openvino", "uvicorn", "httptools", "uvloop",
)  # fmt: skip


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed distribution versions (``"not installed"`` for missing ones), without importing them."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe_machine() -> dict[str, object]:
    """CPU, ISA flags, threads, load and library versions of this process's machine (imports torch)."""
    import torch

    flags = cpu_flags()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "available_cpus": available_cpus(),
        "isa_flags": [f for f in INTERESTING_FLAGS if f in flags],
        "native_bf16": has_native_bf16(flags),
        "best_inference_dtype": str(best_inference_dtype()).removeprefix("torch."),
        "inference_engine": _engine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": load,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": library_versions(),
    }


def _engine() -> str:
    """The frozen-forward engine the fast path uses here (``orthofm.heads.runtime.inference_engine``)."""
    from orthofm.heads.runtime import inference_engine

    try:
        return inference_engine(best_inference_dtype())
    except (ValueError, RuntimeError) as exc:  # a bad ORTHOFM_ENGINE: say so instead of failing `orthofm env`
        return f"invalid: {exc}"
