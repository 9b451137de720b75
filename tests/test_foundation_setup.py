"""The two-command setup: the Makefile's install order and the CI entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _make_dry_run(*args: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60,
                         check=False, env={**os.environ, "MAKEFLAGS": ""})
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_venv_install_order_when_the_pins_change() -> None:
    """monailabel must come after the pinned set and with --no-deps, or pip pulls sam2 / CUDA torch / pydicom 3."""
    lines = _make_dry_run("-W", "requirements.txt", "venv")
    pip = [line.split(" install ", 1)[1] for line in lines if " -m pip install " in line]
    assert pip == [
        "-r requirements.txt",
        "--no-deps monailabel==0.8.5",
        '"setuptools<81"',
        "--no-deps --no-build-isolation -e .",
    ]
    assert lines[-1].startswith("touch ") and lines[-1].endswith(".orthofm-installed")


def test_run_and_test_targets_prepare_the_demo_studies() -> None:
    forced = ("-W", "requirements.txt")
    run = _make_dry_run(*forced, "run")
    assert any("-m orthofm.utils.sample_studies monailabel_app/sample_studies" in line for line in run)
    assert run[-1] == (".venv/bin/orthofm serve --studies monailabel_app/sample_studies "
                       "--host 127.0.0.1 --port 8000")
    test = "\n".join(_make_dry_run(*forced, "test"))
    assert "-m orthofm.utils.sample_studies" in test and "-m pytest" in test
    assert "exit $rc" in test  # pytest's exit code (incl. 5 = nothing collected) reaches make


def test_ci_entry_point_runs_make_test_under_ci_true() -> None:
    script = REPO / ".ci" / "run"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], timeout=60, check=False).returncode == 0
    commands = [line.strip() for line in script.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert commands[-1] == "make test"
    assert 'export CI="${CI:-true}"' in commands
