"""CPU facts, thread and precision helpers, and the once-only logging set-up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from orthofm.utils import runtime
from orthofm.utils.log import parse_level
from orthofm.utils.runtime import (
    available_cpus,
    best_inference_dtype,
    configure_threads,
    cpu_flags,
    has_native_bf16,
    inference_autocast,
)

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9555 64-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: AMD EPYC 9555 64-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16\nCPU implementer\t: 0x41\n"


def test_cpuinfo_parsing_for_x86_and_arm() -> None:
    model, flags = runtime._parse_cpuinfo(X86_CPUINFO)
    assert model == "AMD EPYC 9555 64-Core Processor"
    assert {"avx512_bf16", "avx2"} <= flags and has_native_bf16(flags)
    model, flags = runtime._parse_cpuinfo(ARM_CPUINFO)
    assert model == "" and "asimd" in flags
    assert not has_native_bf16(frozenset({"avx2", "avx512f", "fma"}))
    assert has_native_bf16(frozenset({"amx_tile", "amx_bf16"}))


def test_flags_match_the_kernel_view_of_this_cpu() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this platform")
    first = next(line for line in cpuinfo.read_text().splitlines() if line.lower().startswith(("flags", "features")))
    assert cpu_flags() == frozenset(first.split(":", 1)[1].split())


def test_best_dtype_follows_the_cpu_and_the_fp32_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORTHOFM_FORCE_FP32", raising=False)
    assert best_inference_dtype() == (torch.bfloat16 if has_native_bf16() else torch.float32)
    monkeypatch.setenv("ORTHOFM_FORCE_FP32", "1")
    assert best_inference_dtype() == torch.float32
    monkeypatch.setenv("ORTHOFM_FORCE_FP32", "0")
    assert best_inference_dtype() == (torch.bfloat16 if has_native_bf16() else torch.float32)


def test_inference_autocast_runs_matmuls_in_the_chosen_dtype_and_stays_accurate() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=gen), torch.randn(256, 32, generator=gen)
    exact = a @ b
    with inference_autocast(dtype=torch.bfloat16):
        low = a @ b
    assert low.dtype == torch.bfloat16
    rel = (low.float() - exact).norm() / exact.norm()
    assert 0 < rel < 1e-2  # bf16 really was used (not exact), and is close enough for inference
    with inference_autocast(dtype=torch.float32):
        assert (a @ b).dtype == torch.float32
    with inference_autocast():
        assert (a @ b).dtype == best_inference_dtype()


@pytest.fixture()
def restore_threads() -> None:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads_order_of_precedence(monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    monkeypatch.delenv("ORTHOFM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert configure_threads() == available_cpus() == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads() == 1 == torch.get_num_threads()
    monkeypatch.setenv("ORTHOFM_NUM_THREADS", "2")
    assert configure_threads() == 2 == torch.get_num_threads()
    assert configure_threads(1) == 1 == torch.get_num_threads()


def test_configure_threads_rejects_nonsense(monkeypatch: pytest.MonkeyPatch, restore_threads: None) -> None:
    monkeypatch.setenv("ORTHOFM_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="ORTHOFM_NUM_THREADS='two' is not a whole number"):
        configure_threads()
    with pytest.raises(ValueError, match=">= 1"):
        configure_threads(0)


def test_available_cpus_is_within_the_machine() -> None:
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_parse_level() -> None:
    assert parse_level("debug") == 10 and parse_level("WARNING") == 30 and parse_level(40) == 40
    assert parse_level("20") == 20
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        parse_level("loud")


def test_logging_is_configured_once_per_process(tmp_path: Path) -> None:
    """Repeated set-up must not stack handlers (every line would be printed twice)."""
    code = textwrap.dedent("""
        import logging
        from orthofm.utils.log import configure_logging
        configure_logging()
        configure_logging("DEBUG")
        configure_logging("INFO")
        logging.getLogger("orthofm.test").info("hello once")
        logging.getLogger("orthofm.test").debug("hidden debug")
        print(len(logging.getLogger().handlers))
    """)
    env = {**os.environ, "ORTHOFM_LOG_LEVEL": "INFO"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    lines = [line for line in result.stderr.splitlines() if "orthofm.test" in line]
    assert len(lines) == 1 and lines[0].endswith("INFO    orthofm.test: hello once")


def test_logging_respects_a_handler_someone_else_installed() -> None:
    code = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(stream=sys.stdout, format="OTHER %(message)s", level=logging.WARNING)
        from orthofm.utils.log import configure_logging
        configure_logging("DEBUG")
        logging.getLogger("orthofm.x").debug("ours at debug")
        print(len(logging.getLogger().handlers))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.splitlines() == ["OTHER ours at debug", "1"]


def test_blas_runs_on_one_thread_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenBLAS's spinning workers slow the next forward pass on a small CPU: one thread by default."""
    import numpy as np  # noqa: F401 - loads numpy's OpenBLAS
    from threadpoolctl import threadpool_info, threadpool_limits

    from orthofm.utils.runtime import limit_blas_threads

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", os.environ.get("OPENBLAS_NUM_THREADS", ""))  # restored after
    with threadpool_limits(limits=None):  # puts the process's BLAS threads back afterwards
        monkeypatch.delenv("ORTHOFM_BLAS_THREADS", raising=False)
        limit_blas_threads()
        assert blas_threads() == {1} and os.environ["OPENBLAS_NUM_THREADS"] == "1"
        monkeypatch.setenv("ORTHOFM_BLAS_THREADS", "2")
        limit_blas_threads()
        assert blas_threads() == {2}
        monkeypatch.setenv("ORTHOFM_BLAS_THREADS", "many")
        with pytest.raises(ValueError, match="ORTHOFM_BLAS_THREADS='many'"):
            limit_blas_threads()
