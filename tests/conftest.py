"""Shared test fixtures.

Tests that need the real images in ``../shared`` use the ``shared_data`` / ``shared_weights``
fixtures. Without ``../shared`` they skip with a reason; under CI (``CI=true``) a missing
``../shared`` is an error instead, so CI can never go green by skipping the real-data tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    return Path(os.environ.get("ORTHOFM_SHARED", REPO_ROOT.parent / "shared")).resolve()


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path} (set ORTHOFM_SHARED to the shared/ folder)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must not skip real-data tests: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real MSK images (knee KL PNGs, knee MRI DICOM series, hip, wrist)."""
    return _require(_shared_root() / "data", "shared data")


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """``../shared/fixtures/weights``: official-format checkpoints with reference outputs."""
    return _require(_shared_root() / "fixtures" / "weights", "weight fixtures")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def one_torch_thread():
    """One torch thread for a training test: on the shared 2-core machine two threads under load were ~25x slower
    (measured); restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
