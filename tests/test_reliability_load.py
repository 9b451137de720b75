"""Issue 10 concurrency: inference off the event loop, batching, 16 clients x 25 mixed requests, bounded memory,
inference while a training runs. Bounded to a couple of minutes of requests; uses the small ViT-S."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from test_app_harness import ServerProcess, build_studies

# /info p95 during an inference burst / one single-image inference: a blocked event loop gives about 1 or more
MAX_INFO_OVER_INFER = 0.5


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    work = tmp_path_factory.mktemp("load")
    studies = work / "studies"
    ids = build_studies(studies, shared_data, per_grade=1, mri_slices=3)
    srv = ServerProcess(studies=studies, workdir=work,
                        conf={"embed_on_ingest": "false", "batch_wait_ms": "10"}).start()  # workers = cores
    pngs = [p.read_bytes() for p in sorted(studies.glob("kl*.png"))]
    yield {"srv": srv, "ids": ids, "studies": studies, "pngs": pngs, "http": srv.client()}
    srv.kill()


def rss_mb(srv: ServerProcess) -> float:
    return psutil.Process(srv.proc.pid).memory_info().rss / 2**20


def upload_infer(url: str, data: bytes) -> httpx.Response:
    """An embedding of an uploaded image: never cached, so every request runs the backbone."""
    return httpx.post(url + "/infer/embedding", files={"file": ("x.png", data)}, timeout=300)


def jitter(png: bytes, seed: int) -> bytes:
    a = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)
    a = np.clip(a + np.random.default_rng(seed).integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


BURST = """
import json, sys, time, httpx
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
url, folder = sys.argv[1], Path(sys.argv[2])
files = sorted(folder.glob("*.png"))
def one(p):
    t0 = time.time()
    code = httpx.post(url + "/infer/embedding", files={"file": ("x.png", p.read_bytes())}, timeout=120).status_code
    return t0, time.time(), code
with ThreadPoolExecutor(8) as pool:
    print(json.dumps(list(pool.map(one, files))))
"""
BURST_DEADLINE_S = 300  # 24 uploads take ~10 s on a quiet 2-core box; a hung server fails instead of stalling CI


def in_flight(t: float, spans: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in spans)


@pytest.mark.timeout(BURST_DEADLINE_S + 120)
def test_info_stays_fast_during_an_inference_burst_and_requests_batch(env, tmp_path: Path) -> None:
    """/info must not wait behind inference (MONAI Label's /info waited 650 ms: its /infer runs on the loop).

    Only /info samples taken while an /infer request was in flight count (wall-clock spans reported by the
    burst process), so a burst that starts late or ends early cannot pass with idle samples. The bound is a
    ratio measured side by side, so it holds on a loaded CI box and on a quiet one alike: if inference ran on
    the event loop, /info would wait for the rest of the running forward pass (batches of queued requests run
    back to back), so its p95 would be close to or above one single-image inference; it must stay under half
    of it. The absolute goal (p95 under 50 ms) is a speed goal and lives in ``benchmarks/bench_app.py``
    (``info_p95_during_infer_burst``, in the table beside MONAI Label in docs/benchmarks.md), not here.
    """
    url = env["srv"].url
    assert upload_infer(url, env["pngs"][0]).status_code == 200  # warm-up: model loaded
    single = []
    for i in range(3):  # one image at a time, just before the burst: the cost of one forward on this box now
        t0 = time.perf_counter()
        assert upload_infer(url, jitter(env["pngs"][1], 900 + i)).status_code == 200
        single.append((time.perf_counter() - t0) * 1000)
    single_ms = float(np.median(single))
    for i in range(24):
        (tmp_path / f"{i:02d}.png").write_bytes(jitter(env["pngs"][i % 5], i))

    # the burst comes from another process, so this process's GIL does not inflate the /info timings
    def sample(c: httpx.Client) -> tuple[float, float]:
        start, t0 = time.time(), time.perf_counter()
        assert c.get("/info/").status_code == 200
        ms = (time.perf_counter() - t0) * 1000
        time.sleep(0.02)
        return start, ms

    with httpx.Client(base_url=url, timeout=30) as c:
        idle = [sample(c)[1] for _ in range(60)]
        burst = subprocess.Popen([sys.executable, "-c", BURST, url, str(tmp_path)], stdout=subprocess.PIPE,
                                 text=True)
        samples = []
        deadline = time.monotonic() + BURST_DEADLINE_S
        while burst.poll() is None and time.monotonic() < deadline:
            samples.append(sample(c))
        if burst.poll() is None:
            burst.kill()
            burst.wait()
            pytest.fail(f"24 uploads did not finish within {BURST_DEADLINE_S} s")
        idle += [sample(c)[1] for _ in range(60)]
    spans = json.loads(burst.stdout.read())
    assert [code for _, _, code in spans] == [200] * 24
    busy = [ms for start, ms in samples if in_flight(start, [(a, b) for a, b, _ in spans])]
    infer_p50 = float(np.median([(b - a) * 1000 for a, b, _ in spans]))
    p95_idle, p95_busy = float(np.percentile(idle, 95)), float(np.percentile(busy, 95))
    print(f"/info p95: idle {p95_idle:.1f} ms, during the burst {p95_busy:.1f} ms (n={len(busy)}); one inference "
          f"{single_ms:.0f} ms, /infer p50 in the burst {infer_p50:.0f} ms; ratio {p95_busy / single_ms:.3f}")
    assert len(busy) >= 20, f"only {len(busy)} /info samples overlapped the burst"
    assert p95_busy < MAX_INFO_OVER_INFER * single_ms, (
        f"/info p95 {p95_busy:.1f} ms during the burst is of the order of one inference ({single_ms:.0f} ms): "
        "is inference blocking the event loop?")
    batching = httpx.get(url + "/info/").json()["orthofm"]["batching"]
    assert batching["largest_batch"] >= 2, batching  # queued requests to the model ran as one forward


def mixed_client(url: str, ids: dict, pngs: list[bytes], worker: int, n: int = 25) -> list[tuple[str, int]]:
    out = []
    rng = np.random.default_rng(worker)
    with httpx.Client(base_url=url, timeout=300) as c:
        for i in range(n):
            kind = ["info", "datastore", "next", "infer_id", "infer_upload", "label", "get_label"][i % 7]
            image = ids["png"][int(rng.integers(len(ids["png"])))]
            if kind == "info":
                r = c.get("/info/")
            elif kind == "datastore":
                r = c.get("/datastore/", params={"output": "all"})
            elif kind == "next":
                r = c.post("/activelearning/random", json={"reserve_seconds": 0})
            elif kind == "infer_id":
                r = c.post("/infer/embedding", params={"image": image})
            elif kind == "infer_upload":
                r = c.post("/infer/embedding", files={"file": ("x.png", jitter(pngs[i % len(pngs)], worker * 100 + i))})
            elif kind == "label":
                r = c.put("/datastore/label", params={"image": image, "tag": f"w{worker}"},
                          files={"label": ("l.json", json.dumps({"label": f"KL{i % 5}"}).encode())})
            else:
                r = c.get("/datastore/image/info", params={"image": image})
            out.append((kind, r.status_code))
    return out


def test_16_clients_x_25_mixed_requests_zero_errors_and_bounded_memory(env) -> None:
    url = env["srv"].url
    rss = []
    for burst in range(2):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            results = [r for rs in pool.map(lambda w: mixed_client(url, env["ids"], env["pngs"], w), range(16))
                       for r in rs]
        elapsed = time.perf_counter() - t0
        errors = [r for r in results if r[1] != 200]
        assert len(results) == 400 and not errors, errors[:10]
        rss.append(rss_mb(env["srv"]))
        print(f"burst {burst}: 400 requests in {elapsed:.1f} s ({400 / elapsed:.1f} req/s), RSS {rss[-1]:.0f} MB")
    assert rss[1] - rss[0] < 150, f"RSS grew from {rss[0]:.0f} to {rss[1]:.0f} MB between identical bursts"


@pytest.mark.timeout(1800)
def test_inference_answers_while_a_training_runs(env) -> None:
    http: httpx.Client = env["http"]
    for image in env["ids"]["png"]:
        r = http.put("/datastore/label", params={"image": image, "tag": "cls"},
                     files={"label": ("l.json", json.dumps({"label": f"KL{image[2]}"}).encode())})
        assert r.status_code == 200
    task = http.post("/train/knee_kl", json={"min_labels": 4}).json()
    served = 0
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        st = http.get("/train/").json()
        if st["id"] == task["id"] and st["status"] != "RUNNING" and st["status"] != "SUBMITTED":
            break
        r = upload_infer(env["srv"].url, jitter(env["pngs"][served % 5], 1000 + served))
        assert r.status_code == 200, r.text
        served += 1
    assert st["status"] == "DONE", st.get("details")
    assert served >= 3  # inference kept answering during the training run
    r = http.post("/infer/knee_kl", params={"image": env["ids"]["cr"][0]})
    assert r.status_code == 200 and "expected_grade" in r.json()
