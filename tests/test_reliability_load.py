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

P95_INFO_MS = 50.0


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
import sys, httpx
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
url, folder = sys.argv[1], Path(sys.argv[2])
files = sorted(folder.glob("*.png"))
def one(p):
    return httpx.post(url + "/infer/embedding", files={"file": ("x.png", p.read_bytes())}, timeout=300).status_code
with ThreadPoolExecutor(8) as pool:
    codes = list(pool.map(one, files))
print(sum(c == 200 for c in codes), len(codes))
"""


def test_info_stays_fast_during_an_inference_burst_and_requests_batch(env, tmp_path: Path) -> None:
    url = env["srv"].url
    assert upload_infer(url, env["pngs"][0]).status_code == 200  # warm-up: model loaded
    for i in range(24):
        (tmp_path / f"{i:02d}.png").write_bytes(jitter(env["pngs"][i % 5], i))
    # the burst comes from another process, so this process's GIL does not inflate the /info timings
    def sample(c: httpx.Client) -> float:
        t0 = time.perf_counter()
        assert c.get("/info/").status_code == 200
        time.sleep(0.02)
        return (time.perf_counter() - t0 - 0.02) * 1000

    with httpx.Client(base_url=url, timeout=30) as c:
        idle = [sample(c) for _ in range(60)]
        burst = subprocess.Popen([sys.executable, "-c", BURST, url, str(tmp_path)], stdout=subprocess.PIPE,
                                 text=True)
        time.sleep(0.5)
        busy = []
        while burst.poll() is None:
            busy.append(sample(c))
        idle += [sample(c) for _ in range(60)]
    assert burst.stdout.read().split() == ["24", "24"]
    p95_idle, p95_busy = float(np.percentile(idle, 95)), float(np.percentile(busy, 95))
    print(f"/info p95: idle {p95_idle:.1f} ms, during the burst {p95_busy:.1f} ms (n={len(busy)})")
    assert len(busy) >= 20
    # The 50 ms budget is the server's: on a box whose foreign load already delays an idle /info, that
    # baseline is not charged to the server (on an unloaded machine idle p95 is a few ms).
    assert p95_busy - p95_idle < P95_INFO_MS, f"/info p95 {p95_busy:.1f} ms in the burst vs {p95_idle:.1f} ms idle"
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
