"""The MONAI Label app: HTTP overhead of /infer, next-sample time over cached embeddings, server memory.

- ``infer_http_vs_inprocess``: median latency of ``POST /infer/embedding`` with an uploaded image against a real
  server on 127.0.0.1, divided by the same request handled in-process (``run_infer``: validation, decode,
  backbone, result) in this process. MONAI Label's own ratio was 1.03 (reference/monailabel-0.8.5-measured.md).
- ``next_sample_<strategy>_<n>``: one ``/activelearning`` selection through the app's strategy class over n cached
  768-d embeddings (real ``OrthoDatastore`` model and ``EmbeddingIndex`` in memory, no files), after the index's
  one-off projection; the issue asks for well under 1 s at 10k and seconds at 100k.
- ``server_rss``: resident memory of the server after warm-up and after a burst of uploads.
- ``bench_reliability``: issue 10's table against a real server: the bad-input corpus, stray files, ``/info``
  under an inference burst, throughput and latency at 1, 4 and 16 clients, and ``kill -9`` during label saves.

Rows that issue 10 asks to see beside MONAI Label carry a ``compare`` entry (what was measured, how to show the
value, what MONAI Label 0.8.5 did in ``../shared/reference/monailabel-0.8.5-measured.md``, and the goal);
``benchmarks/run_all.py`` renders those rows as one side-by-side table in ``docs/benchmarks.md``. The reference
column is quoted from that measurement, not re-measured here (MONAI Label's own app is not installed as a
server in this repository), so the two columns come from different runs and, for throughput, different tasks.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
SHARED = Path(os.environ.get("ORTHOFM_SHARED", REPO.parent / "shared"))
MONAI_RSS_MB = 1242.0  # MONAI Label 0.8.5 sample app with a ViT-S after warm-up (measured reference)
MONAI_HTTP_RATIO = 1.03
SIZES = (1_000, 10_000, 100_000)
TARGET_S = {1_000: 0.5, 10_000: 1.0, 100_000: 10.0}


# -- the bad-input corpus (shared with tests/test_reliability_inputs.py) ---------------------------------------
def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if not found:
        raise FileNotFoundError(f"{name} missing from pydicom-data (pinned in requirements.txt)")
    return Path(found)


def png_bytes(w: int, h: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, write_like_original=False)
    return buf.getvalue()


def mr_dataset() -> pydicom.Dataset:
    return pydicom.dcmread(str(_pydicom_file("MR2_UNCR.dcm")))


def _nifti(arr: np.ndarray) -> bytes:
    img = nib.Nifti1Image(arr, np.eye(4))
    return gzip.compress(img.to_bytes())


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def bad_input_corpus(shared_data: Path) -> list[tuple[str, bytes, int, str]]:
    """(name, upload bytes, expected status, a word the error must contain)."""
    png = (min((shared_data / "knee_kl" / "train" / "0").iterdir())).read_bytes()
    jpg = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("L").save(jpg, format="JPEG", quality=90)
    cr = _pydicom_file("RG3_UNCR.dcm").read_bytes()
    no_pixels = mr_dataset()
    del no_pixels.PixelData
    jpeg_ls = mr_dataset()
    jpeg_ls.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"  # JPEG-LS: no decoder installed here
    jpeg_ls.PixelData = pydicom.encaps.encapsulate([jpeg_ls.PixelData])
    lying = mr_dataset()
    lying.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # says JPEG 2000, holds raw pixels
    lying.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    huge_dicom = mr_dataset()
    huge_dicom.Rows, huge_dicom.Columns = 60000, 60000
    series = sorted((shared_data / "knee_mri_dess").glob("*.dcm"))[:3]
    mixed = {f"s{i}.dcm": p.read_bytes() for i, p in enumerate(series)}
    mixed["other.dcm"] = _pydicom_file("MR2_UNCR.dcm").read_bytes()
    nan = np.zeros((8, 8, 4), np.float32)
    nan[2, 2, 2] = np.nan
    inf = np.zeros((8, 8, 4), np.float32)
    inf[1, 2, 3] = np.inf
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vec.nrrd"
        kinds = {"kinds": ["vector", "domain", "domain", "domain"]}
        nrrd.write(str(path), np.zeros((3, 8, 8, 4), np.float32), kinds)
        vec_nrrd = io.BytesIO(path.read_bytes())
    return [
        ("empty", b"", 415, "empty"),
        ("text", b"patient notes, not an image\n" * 20, 415, "text"),
        ("zip of text", _zip({"a.txt": b"hello", "b.txt": b"world"}), 415, "not DICOM"),
        ("truncated png", png[: len(png) // 3], 415, ""),
        ("truncated jpeg", jpg.getvalue()[: len(jpg.getvalue()) // 2], 415, ""),
        ("truncated dicom", cr[: len(cr) // 2], 415, ""),
        ("dicom without pixels", dicom_bytes(no_pixels), 415, "pixel"),
        ("unsupported transfer syntax", dicom_bytes(jpeg_ls), 415, "transfer syntax"),
        ("lying transfer syntax", dicom_bytes(lying), 415, ""),
        ("absurd png header", _png_header_only(100_000, 100_000), 413, "megapixels"),
        ("absurd dicom header", dicom_bytes(huge_dicom), 413, "megapixels"),
        ("bomb 13000^2 png", png_bytes(13000, 13000), 413, "megapixels"),
        ("bomb 8000^2 png below PIL's limit", png_bytes(8000, 8000), 413, "megapixels"),
        ("4d nifti", _nifti(np.zeros((8, 8, 4, 3), np.float32)), 415, "4D"),
        ("vector nrrd", vec_nrrd.getvalue(), 415, ""),
        ("nan volume", _nifti(nan), 415, "non-finite"),
        ("inf volume", _nifti(inf), 415, "non-finite"),
        ("mixed mri series", _zip(mixed), 415, "series"),
        ("zip bomb", _zip({"x.dcm": b"\0" * (50 * 1024 * 1024)}), 413, ""),
    ]



def _row(name: str, value: float, unit: str, reference: float | None = None, notes: str = "",
         higher_is_better: bool = False, compare: dict | None = None) -> dict:
    ratio = None if reference in (None, 0) else value / reference
    row = {"name": name, "value": value, "unit": unit, "reference": reference, "ratio": ratio, "notes": notes,
           "higher_is_better": higher_is_better}
    if compare is not None:
        row["compare"] = compare
    return row


def _vs_monai(what: str, cell: str, monai_label: str = "", goal: str = "") -> dict:
    """A side-by-side entry: rows sharing ``what`` form one table line; ``cell`` is formatted with the row's
    keys (``{value}``, ``{reference}``, ``{unit}``); ``monai_label`` quotes the measured reference."""
    return {"table": "monailabel_0.8.5", "what": what, "cell": cell, "monai_label": monai_label, "goal": goal}


# MONAI Label 0.8.5, measured on a 2-core CPU machine like this one (../shared/reference/monailabel-0.8.5-measured.md)
MONAI_BAD_INPUT = "0: every bad input answered `500 Internal Server Error`, no 4xx codes (row 5)"
MONAI_STRAY = "one temp file left behind per failed upload (cleanup only runs on success; row 5)"
MONAI_INFO = "p50 650 ms behind an 8-client `/infer` burst: inference runs on the event loop (row 4)"
MONAI_1_CLIENT = "10.4 req/s, p50 95 ms (random-init ViT-S classification of a 224 px PNG, no upload; row 4)"
MONAI_4_CLIENTS = "not measured; 8 clients x 10: 10.8 req/s, p50 718 ms, p95 840 ms, fully serialised (row 4)"
MONAI_16_CLIENTS = "not measured (8 clients: fully serialised, `/info` blocked; row 4)"
MONAI_SIGKILL = ("12 kills per datastore size: 2.4 MB JSON emptied in 10/12 (server refuses to start, class labels "
                 "lost once it is deleted); 7.9 KB JSON: 2/12 left a zero-byte label registered (row 6)")


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
    def __init__(self, studies: Path, work: Path, conf: dict[str, str] | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(Path(sys.executable).parent / "orthofm"), "serve", "--studies", str(studies), "--app",
               str(APP_DIR), "--port", str(self.port), "--conf", "embed_on_ingest", "false"]
        for k, v in (conf or {}).items():
            cmd += ["--conf", k, v]
        self.tmpdir = work / "tmp"
        env = {**os.environ, "ORTHOFM_TMPDIR": str(self.tmpdir), "OMP_NUM_THREADS": "1"}
        self.log = open(work / "server.log", "ab")  # noqa: SIM115 - closed in stop()
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

    def kill9(self) -> None:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def _server_timing(header: str) -> dict[str, float]:
    """``parse;dur=1.2, handler;dur=98.0, total;dur=101.5`` -> {"parse": 1.2, ...}."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


SETTLE_S = 0.05  # pause before each timed call (not timed): the previous call's inference threads spin a while

# The HTTP clients run in a process of their own: in the bench process the in-process app's inference threads
# (OpenVINO's, torch's) would compete with the client for the CPU and add ~4 ms per request that is neither
# the server's nor the client's doing (measured: 5.5 ms outside the server in-process, 1.2 ms out of it).
HTTP_CLIENTS = """
import json, sys, time
from pathlib import Path
import httpx
sys.path.insert(0, sys.argv[3])
from benchmarks.bench_app import _jitter, _server_timing, _slicer_client
url, png = sys.argv[1], Path(sys.argv[2]).read_bytes()
httpx_client, slicer = httpx.Client(base_url=url, timeout=300), _slicer_client(url)
for line in sys.stdin:
    kind, seed = line.split()
    data = _jitter(png, int(seed))
    t0 = time.perf_counter()
    if kind == "httpx":
        r = httpx_client.post("/infer/embedding", files={"file": ("x.png", data)})
        ms = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        header = r.headers.get("server-timing", "")
    elif kind == "slicer":
        reply = slicer.infer("embedding", file_data=data, file_name="x.png")
        ms = (time.perf_counter() - t0) * 1000
        header = reply.headers.get("server-timing", "")
    else:  # oneshot: a new httpx client (and SSL context) for the request
        httpx.post(url + "/infer/embedding", files={"file": ("x.png", data)}, timeout=300).raise_for_status()
        ms, header = (time.perf_counter() - t0) * 1000, ""
    print(json.dumps({"ms": ms, "timing": _server_timing(header)}), flush=True)
"""


class _HttpClients:
    """The HTTP clients in their own process, one request per command (the process waits on stdin between)."""

    def __init__(self, url: str, png_path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HTTP_CLIENTS, url, str(png_path), str(REPO)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def request(self, kind: str, seed: int) -> tuple[float, dict[str, float]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{kind} {seed}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the HTTP client process failed on a {kind} request (exit {self.proc.poll()})")
        reply = json.loads(line)
        return reply["ms"], reply["timing"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bench_infer(n: int = 60) -> list[dict]:
    """HTTP against in-process, with the server's own ``Server-Timing`` split so a miss says where time goes.

    Two clients, each kept open as any real one would be: an ``httpx.Client`` (what a script uses) and the
    Slicer extension's own (stdlib ``http.client``, kept-alive connection). A one-shot ``httpx.post`` also
    builds a client (an SSL context: tens of ms) per request, which is the caller's cost, not the server's;
    ``infer_oneshot_client_extra`` measures it. The three paths are interleaved request by request, rotated
    so that none always follows the same one, with an untimed pause before each.
    """
    png = _sample_image()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        studies.mkdir()
        (studies / "knee.png").write_bytes(png)
        (work / "sample.png").write_bytes(png)
        srv = _Server(studies, work)
        clients = None
        try:
            srv.wait()
            url = srv.url
            clients = _HttpClients(url, work / "sample.png")
            for i in range(3):  # warm-up: model load, allocator, both clients' connections
                clients.request("httpx", i)
                clients.request("slicer", 10 + i)
            rss_warm = srv.rss_mb()
            in_process = _inprocess_caller(studies)
            for i in range(3):
                in_process(_jitter(png, 50 + i))  # warm-up of the in-process app
            http_ms, stages, inproc_ms, slicer_ms, slicer_stages = [], [], [], [], []

            def via_httpx(i: int) -> None:
                ms, timing = clients.request("httpx", 100 + i)
                http_ms.append(ms)
                stages.append(timing)

            def via_slicer(i: int) -> None:
                ms, timing = clients.request("slicer", 600 + i)
                slicer_ms.append(ms)
                slicer_stages.append(timing)

            paths = [via_httpx, lambda i: inproc_ms.append(in_process(_jitter(png, 300 + i))), via_slicer]
            for i in range(n):  # alternating, so a change of load on the machine hits every path alike
                for k in range(len(paths)):  # rotated: no path always follows the same one
                    time.sleep(SETTLE_S)
                    paths[(i + k) % len(paths)](i)
            oneshot_ms = [clients.request("oneshot", 500 + i)[0] for i in range(n)]
            for i in range(3 * n):
                clients.request("httpx", 1000 + i)
            rss_after = srv.rss_mb()
        finally:
            if clients is not None:
                clients.close()
            srv.stop()
    slicer_total = [t.get("total", 0.0) for t in slicer_stages]
    http_med, in_med = statistics.median(http_ms), statistics.median(inproc_ms)
    stage_med = {k: statistics.median(s[k] for s in stages if k in s) for k in ("parse", "queue", "handler",
                                                                                  "encode", "total")
                 if any(k in s for s in stages)}
    outside = statistics.median(h - s.get("total", 0.0) for h, s in zip(http_ms, stages))
    split = ", ".join(f"{k} {v:.1f}" for k, v in stage_med.items())
    rows.append(_row("infer_embedding_http_p50", http_med, "ms", None,
                     f"POST /infer/embedding, 224 px PNG upload, one kept-open httpx client in a client process, n={n}"))
    rows.append(_row("infer_embedding_inprocess_p50", in_med, "ms", None, "same request through run_infer in-process"))
    rows.append(_row("infer_http_vs_inprocess", http_med / in_med, "x", MONAI_HTTP_RATIO,
                     "server overhead factor; reference = MONAI Label 0.8.5's HTTP/task ratio",
                     compare=_vs_monai("HTTP / in-process latency of one inference", "{value:.2f}x",
                                       "1.03x over the task, 224 px PNG by id (includes no upload; row 2)")))
    slicer_med = statistics.median(slicer_ms)
    slicer_outside = statistics.median(c - t for c, t in zip(slicer_ms, slicer_total))
    rows.append({**_row("infer_http_slicer_client_vs_inprocess", slicer_med / in_med, "x", None,
                        f"OrthoFM's Slicer client (stdlib http.client, kept-alive connection; {slicer_med:.1f} ms "
                        f"p50, server total {statistics.median(slicer_total):.1f}, outside the server "
                        f"{slicer_outside:.1f} ms) over the in-process call: the annotator's click"),
                 "stages_ms": {"total": round(statistics.median(slicer_total), 2), "outside": round(slicer_outside, 2)}})
    rows.append({**_row("infer_server_stages_p50", stage_med.get("total", 0.0), "ms", http_med,
                        f"server's Server-Timing medians (ms): {split}; outside the server (client + loopback) "
                        f"{outside:.1f} ms"),
                 "stages_ms": {k: round(v, 2) for k, v in {**stage_med, "outside": outside}.items()}})
    rows.append(_row("infer_handler_server_vs_inprocess", stage_med.get("handler", 0.0) / in_med, "x", None,
                     "run_infer inside the server (pool thread, Server-Timing) over the same call in this process"))
    rows.append(_row("infer_oneshot_client_extra", statistics.median(oneshot_ms) - http_med, "ms", http_med,
                     "one-shot httpx.post (new client and SSL context per request) minus the kept-open client"))
    rows.append(_row("server_rss_after_warmup", rss_warm, "MB", MONAI_RSS_MB, "reference: MONAI Label app, ViT-S",
                     compare=_vs_monai("server RSS after warm-up -> after a burst", "{value:.0f} MB",
                                       "1058 -> 1242 MB (ViT-S + heatmap task; row 4)")))
    rows.append(_row("server_rss_after_burst", rss_after, "MB", rss_warm, f"after {3 * n} more uploads",
                     compare=_vs_monai("server RSS after warm-up -> after a burst", "{value:.0f} MB")))
    return rows


def _slicer_client(url: str) -> object:
    """The Slicer extension's own client (``OrthoFMLib``, no Slicer needed)."""
    lib = Path(__file__).resolve().parents[1] / "slicer_extension" / "OrthoFM"
    if str(lib) not in sys.path:
        sys.path.insert(0, str(lib))
    from OrthoFMLib.client import OrthoFMClient

    return OrthoFMClient(url)


def _inprocess_caller(studies: Path) -> Callable[[bytes], float]:
    """The server's own request handler in this process (same validation, decode, task, result): a function
    that handles one upload and returns its milliseconds."""
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    from lib.server.config import ServerSettings
    from lib.server.routes_infer import run_infer
    from monailabel.interfaces.utils.app import app_instance

    os.environ.setdefault("MONAI_LABEL_RELOAD_APP_LIB", "false")
    os.environ["MONAI_LABEL_DATASTORE_FILE_EXT"] = '["*.png"]'
    instance = app_instance(app_dir=str(APP_DIR), studies=str(studies), conf={"embed_on_ingest": "false"})
    settings = ServerSettings.from_conf({})

    def one(data: bytes) -> float:
        upload = types.SimpleNamespace(file=io.BytesIO(data))
        t0 = time.perf_counter()
        run_infer(instance, settings, "embedding", "", {}, upload, "bench")
        return (time.perf_counter() - t0) * 1000

    return one


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
                strat({"seed": 0, "reserve_seconds": 0}, ds)  # warm-up (BLAS/faiss thread pools, page faults)
                times = []
                for rep in range(3):
                    t0 = time.perf_counter()
                    res = strat({"seed": rep, "reserve_seconds": 0}, ds)
                    times.append(time.perf_counter() - t0)
                    assert res and res["id"] not in labeled
                dt = statistics.median(times)
                note = "median of 3 after a warm-up"
                if name in ("uncertainty", "hybrid"):
                    note += "; with a 5-class logistic head's probabilities"
                assert "fallback" not in res
                rows.append(_row(f"next_sample_{name}_{n}", dt, "s", TARGET_S[n], note))
    return rows


def _probe_head(rng: np.random.Generator):
    """A real logistic-probe head (orthofm.heads) fitted on 200 random vectors: only its cost matters here."""
    from orthofm.heads import fit_head

    x = rng.standard_normal((200, 768), dtype=np.float32)
    y = np.arange(200) % 5
    return fit_head(x, y, [str(i) for i in range(200)], [f"KL{i}" for i in range(5)], kind="probe", ordinal=True)


LOAD_CLIENT = """
import json, sys, time, httpx
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
url, folder, clients, per = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
files = sorted(folder.glob("*.png"))
def worker(w):
    out = []
    with httpx.Client(base_url=url, timeout=600) as c:
        for i in range(per):
            data = files[(w * per + i) % len(files)].read_bytes()
            t0 = time.perf_counter()
            r = c.post("/infer/embedding", files={"file": ("x.png", data)})
            out.append(((time.perf_counter() - t0) * 1000, r.status_code))
    return out
t0 = time.perf_counter()
with ThreadPoolExecutor(clients) as pool:
    res = [x for xs in pool.map(worker, range(clients)) for x in xs]
print(json.dumps({"wall": time.perf_counter() - t0, "ms": [r[0] for r in res], "codes": [r[1] for r in res]}))
"""


def _load(url: str, folder: Path, clients: int, per: int) -> dict:
    import json

    p = subprocess.run([sys.executable, "-c", LOAD_CLIENT, url, str(folder), str(clients), str(per)],
                       capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _tree(root: Path, skip: tuple[str, ...] = (".orthofm", ".lock")) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] not in skip}


def bench_reliability(trials: int = 3) -> list[dict]:
    """Issue 10's table: bad inputs, stray files, /info under load, throughput by clients, SIGKILL losses."""
    import json
    import threading

    import httpx

    png = _sample_image()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-rel-") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        studies.mkdir()
        for i in range(5):
            (studies / f"knee{i}.png").write_bytes(_jitter(png, i))
        jit = work / "jitter"
        jit.mkdir()
        for i in range(64):
            (jit / f"{i:03d}.png").write_bytes(_jitter(png, 500 + i))
        srv = _Server(studies, work, {"max_upload_mb": "8"})
        try:
            srv.wait()
            url = srv.url
            httpx.post(url + "/infer/embedding", files={"file": ("x.png", png)}, timeout=300).raise_for_status()
            # bad inputs: each corpus file as an upload to the datastore and as an inference input
            if (SHARED / "data" / "knee_kl").is_dir():
                before_s, before_t = _tree(studies), _tree(srv.tmpdir)
                corpus = bad_input_corpus(SHARED / "data")
                good = kinds = 0
                for _, data, status, _ in corpus:
                    a = httpx.put(url + "/datastore/image?image=bad", files={"file": ("x.png", data)}, timeout=300)
                    b = httpx.post(url + "/infer/embedding", files={"file": ("x.dcm", data)}, timeout=300)
                    good += (a.status_code == status) + (b.status_code == status)
                    kinds += a.status_code == status and b.status_code == status
                stray = len(_tree(studies) ^ before_s) + len(
                    {t for t in _tree(srv.tmpdir) ^ before_t if not t.startswith("torchinductor")})
                rows.append(_row("bad_input_kinds_answered_4xx", kinds, "kinds", len(corpus),
                                 "kinds of malformed file whose upload and inference both got the expected 4xx",
                                 higher_is_better=True,
                                 compare=_vs_monai("bad-input kinds answered with the right 4xx",
                                                   "{value:.0f} of {reference:.0f} kinds", MONAI_BAD_INPUT,
                                                   "all, each 4xx naming the problem")))
                rows.append(_row("bad_inputs_answered_4xx", good, "requests", 2 * len(corpus),
                                 f"{len(corpus)} malformed files x (upload, infer); MONAI Label 0.8.5: 0 (all 500)",
                                 higher_is_better=True,
                                 compare=_vs_monai("bad-input kinds answered with the right 4xx",
                                                   "{value:.0f} of {reference:.0f} requests (upload + infer)")))
                rows.append(_row("bad_inputs_stray_files", stray, "files", None,
                                 "left in studies + temp folders; MONAI Label 0.8.5 leaves one per failed upload",
                                 compare=_vs_monai("stray files after the bad-input corpus (studies + temp folders)",
                                                   "{value:.0f}", MONAI_STRAY, "0")))
            # /info while 24 uploads are inferred by 8 clients in another process (idle baseline first)
            with httpx.Client(base_url=url, timeout=60) as c:
                idle = []
                for _ in range(60):
                    t0 = time.perf_counter()
                    c.get("/info/").raise_for_status()
                    idle.append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.02)
            rows.append(_row("info_p95_idle", float(np.percentile(idle, 95)), "ms", None,
                             "baseline of the same client on the same (shared) machine",
                             compare=_vs_monai("`GET /info` p95 during an 8-client inference burst", "idle {value:.0f} ms")))
            lat: list[float] = []
            burst = subprocess.Popen([sys.executable, "-c", LOAD_CLIENT, url, str(jit), "8", "3"],
                                     stdout=subprocess.PIPE, text=True)
            with httpx.Client(base_url=url, timeout=60) as c:
                time.sleep(0.5)
                while burst.poll() is None:
                    t0 = time.perf_counter()
                    c.get("/info/").raise_for_status()
                    lat.append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.02)
            burst.communicate()
            rows.append(_row("info_p95_during_infer_burst", float(np.percentile(lat, 95)), "ms", 50.0,
                             f"n={len(lat)}; target 50 ms; MONAI Label 0.8.5: /info p50 650 ms in such a burst",
                             compare=_vs_monai("`GET /info` p95 during an 8-client inference burst",
                                               "burst {value:.0f} ms (n=" + str(len(lat)) + ")", MONAI_INFO,
                                               "< 50 ms")))
            monai_by_clients = {1: MONAI_1_CLIENT, 4: MONAI_4_CLIENTS, 16: MONAI_16_CLIENTS}
            for clients, per in ((1, 12), (4, 6), (16, 3)):
                res = _load(url, jit, clients, per)
                ok = sum(c == 200 for c in res["codes"])
                what = (f"`POST /infer/embedding` (224 px PNG upload), {clients} client{'s' * (clients > 1)}:"
                        " throughput, p50 / p95")
                errors = len(res["codes"]) - ok
                rows.append(_row(f"throughput_{clients}_clients", ok / res["wall"], "req/s", None,
                                 f"{clients}x{per} POST /infer/embedding uploads; errors {errors}",
                                 higher_is_better=True,
                                 compare=_vs_monai(what, "{value:.2f} req/s (" + f"{errors} errors)",
                                                   monai_by_clients[clients], "zero errors")))
                rows.append(_row(f"latency_p50_{clients}_clients", float(np.percentile(res["ms"], 50)), "ms",
                                 compare=_vs_monai(what, "p50 {value:.0f} ms")))
                rows.append(_row(f"latency_p95_{clients}_clients", float(np.percentile(res["ms"], 95)), "ms",
                                 compare=_vs_monai(what, "p95 {value:.0f} ms")))
            # kill -9 during label saves: acknowledged labels must all survive
            lost = unreadable = empty = acked_total = 0
            for trial in range(trials):
                acked: dict = {}
                stop = threading.Event()

                def burst_saves(w: int, trial: int = trial, acked: dict = acked, stop=stop,
                                base: str = srv.url) -> None:
                    i = 0
                    with httpx.Client(base_url=base, timeout=10) as c:
                        while not stop.is_set():
                            img, tag = f"knee{(w + i) % 5}", f"t{trial}w{w}n{i}"
                            data = json.dumps({"label": f"KL{i % 5}", "pad": "x" * (i % 50) * 40}).encode()
                            try:
                                r = c.put("/datastore/label", params={"image": img, "tag": tag},
                                          files={"label": ("l.json", data)})
                            except httpx.HTTPError:
                                return
                            if r.status_code == 200:
                                acked[(img, tag)] = data
                            i += 1

                threads = [threading.Thread(target=burst_saves, args=(w,)) for w in range(4)]
                for t in threads:
                    t.start()
                deadline = time.monotonic() + 120
                while len(acked) < 40 and time.monotonic() < deadline:
                    time.sleep(0.05)
                srv.kill9()
                stop.set()
                for t in threads:
                    t.join()
                acked_total += len(acked)
                try:
                    objects = json.loads((studies / "datastore_v2.json").read_text())["objects"]
                except ValueError:
                    unreadable += 1
                    objects = {}
                srv = _Server(studies, work, {"max_upload_mb": "8"})
                srv.wait()
                objects = httpx.get(srv.url + "/datastore/?output=all", timeout=60).json()["objects"]
                for (img, tag), data in acked.items():
                    f = studies / "labels" / tag / f"{img}.json"
                    if tag not in objects.get(img, {}).get("labels", {}) or not f.is_file() or f.read_bytes() != data:
                        lost += 1
                for img, obj in objects.items():
                    for tag, lab in obj["labels"].items():
                        f = studies / "labels" / tag / f"{img}{lab['ext']}"
                        empty += int(not f.is_file() or f.stat().st_size == 0)
            what = f"`kill -9` during 4-client label saves ({trials} trials): acknowledged labels lost"
            rows.append(_row("sigkill_acknowledged_labels_lost", lost, "labels", None,
                             f"{trials} kill -9 trials during 4-client label bursts, {acked_total} acknowledged; "
                             "MONAI Label 0.8.5: JSON emptied in 10/12 kills with a large datastore",
                             compare=_vs_monai(what, "{value:.0f} of " + f"{acked_total} acknowledged",
                                               MONAI_SIGKILL, "0")))
            rows.append(_row("sigkill_json_unreadable", unreadable, "trials", None, "datastore JSON unparsable after kill",
                             compare=_vs_monai(what, "datastore JSON unreadable in {value:.0f} trials")))
            rows.append(_row("sigkill_zero_byte_labels_registered", empty, "labels", None,
                             "MONAI Label 0.8.5: 2/12 kills left one",
                             compare=_vs_monai(what, "{value:.0f} zero-byte labels registered")))
        finally:
            srv.stop()
    return rows


def run() -> list[dict]:
    return bench_next_sample() + bench_infer() + bench_reliability()


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:40s} {row['value']:10.4f} {row['unit']:3s} ref={row['reference']} {row['notes']}")
