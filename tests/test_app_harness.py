"""A real OrthoFM server process for the app tests: free loopback port, own process group, killed afterwards.

Imported by the other ``test_app_*`` / ``test_reliability_*`` modules; the tests here only check the harness
itself (start, answer, stop on Ctrl-C).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
ORTHOFM = Path(sys.executable).parent / "orthofm"
START_TIMEOUT = float(os.environ.get("ORTHOFM_TEST_START_TIMEOUT", "420"))  # a loaded 2-core box


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """One ``orthofm serve`` process; ``url`` is its base URL; ``log_text()`` its combined output."""

    studies: Path
    workdir: Path
    conf: dict[str, str] = field(default_factory=dict)
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tmpdir(self) -> Path:
        return self.workdir / "server-tmp"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.port}.log"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        self.port = self.port or free_port()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        cmd = [str(ORTHOFM), "serve", "--studies", str(self.studies), "--app", str(APP_DIR),
               "--host", "127.0.0.1", "--port", str(self.port)]
        for k, v in self.conf.items():
            cmd += ["--conf", k, v]
        env = {**os.environ, "ORTHOFM_TMPDIR": str(self.tmpdir), "TMPDIR": str(self.tmpdir),
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **self.env}
        if self.token:
            env["ORTHOFM_API_TOKEN"] = self.token
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by the child's lifetime
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"server did not answer /health within {timeout}s:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (server + its train/scoring subprocesses) and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if sig == signal.SIGKILL:
            # children of a SIGKILLed server (background training) are in the same group: make sure
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.headers)


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if not found:
        pytest.fail(f"{name} missing from pydicom-data (pinned in requirements.txt)")
    return Path(found)


def build_studies(root: Path, shared_data: Path, per_grade: int = 2, mri_slices: int = 6) -> dict[str, list[str]]:
    """A studies folder of real images: knee KL PNGs (``kl<g>_<name>``), a CR and an MR slice (pydicom-data)
    and a knee MRI DICOM series folder. Returns {"png": ids, "cr": [id], "mr": [id], "series": [id]}."""
    root.mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {"png": [], "cr": [], "mr": [], "series": []}
    for grade in range(5):
        folder = shared_data / "knee_kl" / "train" / str(grade)
        for f in sorted(folder.iterdir())[:per_grade]:
            shutil.copyfile(f, root / f"kl{grade}_{f.name}")
            ids["png"].append(f"kl{grade}_{f.stem}")
    shutil.copyfile(pydicom_file("RG3_UNCR.dcm"), root / "cr_leg.dcm")
    ids["cr"].append("cr_leg")
    shutil.copyfile(pydicom_file("MR2_UNCR.dcm"), root / "mr_shoulder.dcm")
    ids["mr"].append("mr_shoulder")
    series = root / "knee_mri"
    series.mkdir()
    slices = sorted((shared_data / "knee_mri_dess").glob("*.dcm"))
    start = max(0, len(slices) // 2 - mri_slices // 2)
    for f in slices[start:start + mri_slices]:
        shutil.copyfile(f, series / f.name)
    ids["series"].append("knee_mri")
    return ids


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """``server_factory(studies, conf={...}, token=None)`` -> a started ServerProcess, killed at teardown."""
    started: list[ServerProcess] = []

    def make(studies: Path, conf: dict[str, str] | None = None, token: str | None = None,
             start: bool = True, **kw) -> ServerProcess:
        srv = ServerProcess(studies=studies, workdir=tmp_path, conf=conf or {}, token=token, **kw)
        started.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in started:
        srv.kill()


def test_server_starts_answers_info_and_stops_on_ctrl_c(tmp_path: Path, server_factory) -> None:
    studies = tmp_path / "studies"  # does not exist yet: the server creates it
    srv = server_factory(studies, conf={"models": "all"})
    with srv.client() as c:
        info = c.get("/info/").json()
        assert info["name"] == "OrthoFM"
        assert "random" in info["strategies"]
        assert c.get("/health").json() == {"status": "ok"}
    assert studies.is_dir()
    os.killpg(srv.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends to the foreground group
    assert srv.proc.wait(timeout=30) == 0, srv.log_text()[-3000:]
    assert "Application shutdown complete" in srv.log_text()
