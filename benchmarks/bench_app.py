"""The MONAI Label app: HTTP overhead of /infer, next-sample time over cached embeddings, server memory.

- ``infer_http_vs_inprocess``: median latency of ``POST /infer/embedding`` with an uploaded image against a real
  server on 127.0.0.1, divided by the same request handled in-process (``run_infer``: validation, decode,
  backbone, result) in this process. MONAI Label's own ratio was 1.03 (reference/monailabel-0.8.5-measured.md).
- ``next_sample_<strategy>_<n>``: one ``/activelearning`` selection through the app's strategy class over n cached
  768-d embeddings (real ``OrthoDatastore`` model and ``EmbeddingIndex`` in memory, no files), after the index's
  one-off projection; the issue asks for well under 1 s at 10k and seconds at 100k.
- ``server_rss``: resident memory of the server after warm-up and after a burst of uploads.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
SHARED = Path(os.environ.get("ORTHOFM_SHARED", REPO.parent / "shared"))
MONAI_RSS_MB = 1242.0  # MONAI Label 0.8.5 sample app with a ViT-S after warm-up (measured reference)
MONAI_HTTP_RATIO = 1.03
SIZES = (1_000, 10_000, 100_000)
TARGET_S = {1_000: 0.5, 10_000: 1.0, 100_000: 10.0}


def _row(name, value, unit, reference=None, notes="", higher_is_better=False) -> dict:
    ratio = None if reference in (None, 0) else value / reference
    return {"name": name, "value": value, "unit": unit, "reference": reference, "ratio": ratio, "notes": notes,
            "higher_is_better": higher_is_better}


def _sample_image() -> bytes:
    knee = SHARED / "data" / "knee_kl" / "val" / "2"
    if knee.is_dir():
        return min(knee.iterdir()).read_bytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((224, 224)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jitter(png: bytes, seed: int) -> bytes:
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)
    a = np.clip(a + np.random.default_rng(seed).integers(-2, 3, a.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


class _Server:
    def __init__(self, studies: Path, work: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(Path(sys.executable).parent / "orthofm"), "serve", "--studies", str(studies), "--app",
               str(APP_DIR), "--port", str(self.port), "--conf", "embed_on_ingest", "false"]
        env = {**os.environ, "ORTHOFM_TMPDIR": str(work / "tmp"), "OMP_NUM_THREADS": "1"}
        self.log = open(work / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server did not start")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def bench_infer(n: int = 15) -> list[dict]:
    import httpx

    png = _sample_image()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        studies.mkdir()
        (studies / "knee.png").write_bytes(png)
        srv = _Server(studies, work)
        try:
            srv.wait()
            url = srv.url
            for i in range(3):  # warm-up: model load, allocator
                httpx.post(url + "/infer/embedding", files={"file": ("x.png", _jitter(png, i))}, timeout=300)
            rss_warm = srv.rss_mb()
            http_ms = []
            for i in range(n):
                data = _jitter(png, 100 + i)
                t0 = time.perf_counter()
                r = httpx.post(url + "/infer/embedding", files={"file": ("x.png", data)}, timeout=300)
                http_ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
            for i in range(3 * n):
                httpx.post(url + "/infer/embedding", files={"file": ("x.png", _jitter(png, 1000 + i))}, timeout=300)
            rss_after = srv.rss_mb()
        finally:
            srv.stop()
        inproc_ms = _inprocess_ms(studies, png, n)
    http_med, in_med = statistics.median(http_ms), statistics.median(inproc_ms)
    rows.append(_row("infer_embedding_http_p50", http_med, "ms", None, f"POST /infer/embedding, 224 px PNG upload, n={n}"))
    rows.append(_row("infer_embedding_inprocess_p50", in_med, "ms", None, "same request through run_infer in-process"))
    rows.append(_row("infer_http_vs_inprocess", http_med / in_med, "x", MONAI_HTTP_RATIO,
                     "server overhead factor; reference = MONAI Label 0.8.5's HTTP/task ratio"))
    rows.append(_row("server_rss_after_warmup", rss_warm, "MB", MONAI_RSS_MB, "reference: MONAI Label app, ViT-S"))
    rows.append(_row("server_rss_after_burst", rss_after, "MB", rss_warm, f"after {3 * n} more uploads"))
    return rows


def _inprocess_ms(studies: Path, png: bytes, n: int) -> list[float]:
    """The server's own request handler, called directly (same validation, decode, task, result)."""
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    from lib.server.config import ServerSettings
    from lib.server.routes_infer import run_infer
    from monailabel.interfaces.utils.app import app_instance

    os.environ.setdefault("MONAI_LABEL_RELOAD_APP_LIB", "false")
    os.environ["MONAI_LABEL_DATASTORE_FILE_EXT"] = '["*.png"]'
    instance = app_instance(app_dir=str(APP_DIR), studies=str(studies), conf={"embed_on_ingest": "false"})
    settings = ServerSettings.from_conf({})
    out = []
    for i in range(n + 3):
        upload = types.SimpleNamespace(file=io.BytesIO(_jitter(png, 100 + i)))
        t0 = time.perf_counter()
        run_infer(instance, settings, "embedding", "", {}, upload, "bench")
        if i >= 3:
            out.append((time.perf_counter() - t0) * 1000)
    return out


def bench_next_sample(sizes=SIZES) -> list[dict]:
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    from lib.activelearning.embedding_strategy import EmbeddingStrategy
    from lib.embeddings import EmbeddingIndex
    from lib.server.datastore import OrthoDatastore
    from monailabel.datastore.local import DataModel, ImageLabelModel

    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-al-") as tmp:
        for n in sizes:
            folder = Path(tmp) / f"s{n}"
            folder.mkdir()
            ds = OrthoDatastore(str(folder), auto_reload=False)
            ids = [f"img{i:06d}" for i in range(n)]
            labeled = set(ids[:: max(1, n // 50)])  # 50 labels
            for i in ids:
                labels = {"cls": DataModel(ext=".json")} if i in labeled else {}
                ds._datastore.objects[i] = ImageLabelModel(image=DataModel(ext=".png"), labels=labels)
            store = types.SimpleNamespace(backbone_id="bench", dim=768)
            index = EmbeddingIndex(store, folder / "emb")
            index.add_vectors(ids, rng.standard_normal((n, 768), dtype=np.float32))
            t0 = time.perf_counter()
            index.matrix()  # the one-off projection, redone only when vectors change
            prep_s = time.perf_counter() - t0
            head = _probe_head(rng)
            runtime = types.SimpleNamespace(embedding_index=index, head=lambda task, h=head: h,
                                            sync_embeddings=lambda d, compute=False: 0)
            rows.append(_row(f"next_sample_index_prepare_{n}", prep_s, "s", None,
                             "normalise + project 768 -> 128 once per change of the index"))
            for name in ("random", "coreset", "typiclust", "probcover", "uncertainty", "hybrid"):
                strat = EmbeddingStrategy(name, runtime, name)
                t0 = time.perf_counter()
                res = strat({"seed": 0, "reserve_seconds": 0}, ds)
                dt = time.perf_counter() - t0
                assert res and res["id"] not in labeled
                note = "with a 5-class logistic head's probabilities" if name in ("uncertainty", "hybrid") else ""
                assert "fallback" not in res
                rows.append(_row(f"next_sample_{name}_{n}", dt, "s", TARGET_S[n], note))
    return rows


def _probe_head(rng: np.random.Generator):
    """A real logistic-probe head (orthofm.heads) fitted on 200 random vectors: only its cost matters here."""
    from orthofm.heads import fit_head

    x = rng.standard_normal((200, 768), dtype=np.float32)
    y = np.arange(200) % 5
    return fit_head(x, y, [str(i) for i in range(200)], [f"KL{i}" for i in range(5)], kind="probe", ordinal=True)


def run() -> list[dict]:
    return bench_next_sample() + bench_infer()


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:40s} {row['value']:10.4f} {row['unit']:3s} ref={row['reference']} {row['notes']}")
