"""Small shared helpers: crash-safe writes, logging set-up, CPU/thread/precision settings.

Importing this package never imports torch; the torch helpers import it when called.
"""

from .atomic import atomic_path, atomic_write_bytes, atomic_write_text
from .log import configure_logging
from .runtime import (
    available_cpus,
    best_inference_dtype,
    configure_threads,
    cpu_flags,
    cpu_model,
    default_device,
    has_native_bf16,
    inference_autocast,
    resolve_precision,
)

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "available_cpus",
    "best_inference_dtype",
    "configure_logging",
    "configure_threads",
    "cpu_flags",
    "cpu_model",
    "default_device",
    "has_native_bf16",
    "inference_autocast",
    "resolve_precision",
]
