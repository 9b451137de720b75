"""Issue 10: the bad-input corpus, access control and patient data, against one real server process.

Every malformed input gets its 4xx JSON naming the problem; the server keeps serving; nothing is left in the
studies folder, the label folders, the datastore JSON or the server's temp folder. The server runs with a bearer
token (so every request below also proves the token path), an 8 MB upload cap, a 40 MP limit, DICOM
de-identification on ingest and a configured CORS origin.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
import pytest
from test_app_harness import ORTHOFM, ServerProcess, build_studies, free_port

from benchmarks.bench_app import bad_input_corpus, dicom_bytes, mr_dataset, png_bytes

TOKEN = "test-token-0123456789abcdef"
ORIGIN = "http://viewer.example.org"
PHI = {"PatientName": "Doe^Janeforty", "PatientID": "PID-XQ-99812", "PatientBirthDate": "19700131"}
PHI_STRINGS = ("Doe", "Janeforty", "PID-XQ-99812", "19700131")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    work = tmp_path_factory.mktemp("inputs")
    studies = work / "studies"
    ids = build_studies(studies, shared_data, per_grade=1, mri_slices=3)
    conf = {"max_upload_mb": "8", "max_megapixels": "40", "deidentify": "true", "cors_origins": ORIGIN,
            "embed_on_ingest": "false"}
    srv = ServerProcess(studies=studies, workdir=work, conf=conf, token=TOKEN).start()
    client = srv.client()
    # a valid class label, so label endpoints have something to refuse around
    r = client.put("/datastore/label", params={"image": ids["png"][0], "tag": "cls"},
                   files={"label": ("l.json", b'{"label": "KL0"}')})
    assert r.status_code == 200, r.text
    yield {"srv": srv, "ids": ids, "studies": studies, "work": work, "http": client}
    srv.kill()


def snapshot(env) -> dict:
    """Every file under the studies folder (bytes of the datastore JSON) and the server's temp folder."""
    studies: Path = env["studies"]
    files = {}
    for p in sorted(studies.rglob("*")):
        rel = p.relative_to(studies)
        if rel.parts[0] in (".orthofm", ".lock") or not p.is_file():
            continue
        files[str(rel)] = p.stat().st_size
    tmp = sorted(str(p.relative_to(env["srv"].tmpdir)) for p in env["srv"].tmpdir.rglob("*")
                 if not str(p.relative_to(env["srv"].tmpdir)).startswith("torchinductor"))
    return {"files": files, "json": (studies / "datastore_v2.json").read_bytes(), "tmp": tmp}


@pytest.fixture(scope="module")
def corpus(shared_data: Path):
    return bad_input_corpus(shared_data)


def check_error(r: httpx.Response, status: int, word: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert set(body) >= {"error", "detail", "request_id"}, body
    assert "Traceback" not in r.text and "/tmp/" not in body["detail"], body
    if word:
        assert word.lower() in body["detail"].lower(), body
    return body


def test_bad_uploads_get_4xx_and_leave_nothing_behind(env, corpus) -> None:
    http: httpx.Client = env["http"]
    before = snapshot(env)
    for name, data, status, word in corpus:
        r = http.put("/datastore/image", params={"image": "bad_upload"}, files={"file": ("x.png", data)})
        check_error(r, status, word)
        r = http.post("/infer/embedding", files={"file": ("x.dcm", data)})
        check_error(r, status, word)
        assert http.get("/health").status_code == 200, f"server died on {name}"
    after = snapshot(env)
    assert after == before


def test_bad_ids_tags_names_and_params(env) -> None:
    http: httpx.Client = env["http"]
    png = env["ids"]["png"][0]
    before = snapshot(env)
    for image in ("../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2fx", "nope", "a\x00b",
                  str(env["studies"] / f"{png}.png")):
        check_error(http.post("/infer/embedding", params={"image": image}), 404)
        check_error(http.get("/datastore/image", params={"image": image}), 404)
        check_error(http.put("/datastore/label", params={"image": image, "tag": "cls"},
                             files={"label": ("l.json", b'{"label": 1}')}), 404)
    raw = httpx.get(env["srv"].url + "/datastore/image?image=..%2F..%2Fetc%2Fpasswd", headers=env["srv"].headers)
    check_error(raw, 404)
    for tag in ("../../escape", "/abs", "UPPER", "a" * 40, "fin al"):
        check_error(http.put("/datastore/label", params={"image": png, "tag": tag},
                             files={"label": ("l.json", b'{"label": 1}')}), 422, "tag")
    check_error(http.post("/infer/nope", params={"image": png}), 404, "unknown model")
    check_error(http.post("/activelearning/nope", json={}), 404, "unknown strategy")
    check_error(http.post("/scoring/nope", json={}), 404, "unknown scoring")
    check_error(http.post("/train/nope", json={}), 404, "unknown trainer")
    for params, word in (("{bad json", "JSON"), ("[1, 2]", "object"), ('{"bogus": 1}', "unknown parameter"),
                         ('{"result_compress": "yes"}', "expected bool"),
                         ('{"result_extension": "/../../x.nrrd"}', "not one of"),
                         ('{"timeout": NaN}', "JSON"), ('{"a":' * 20 + "1" + "}" * 20, "")):
        check_error(http.post("/infer/embedding", params={"image": png}, data={"params": params}), 422, word)
    check_error(http.post("/activelearning/random", json={"seed": "x"}), 422, "seed")
    check_error(http.post("/activelearning/typiclust", json=[1, 2]), 422)
    check_error(http.post("/train/knee_kl", json={"kind": "svm"}), 422, "not one of")
    check_error(http.post("/infer/embedding", params={"image": png, "output": "pdf"}), 422, "output")
    check_error(http.post("/infer/embedding"), 422, "exactly one input")
    check_error(http.put("/datastore/image", params={"image": "../evil"}, files={"file": ("x.png", b"x")}),
                422, "not allowed")
    assert snapshot(env) == before


def test_bad_label_files(env) -> None:
    http: httpx.Client = env["http"]
    png = env["ids"]["png"][1]
    before = snapshot(env)
    for data, status, word in ((b"", 415, "empty"), (b"not an image, not json", 415, "text"),
                               (b'{"grade": 2}', 422, '"label"'), (b'{"label": true}', 422, '"label"'),
                               (png_bytes(50, 60), 422, "does not match"),
                               (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, 415, "")):
        check_error(http.put("/datastore/label", params={"image": png, "tag": "final"},
                             files={"label": ("l.bin", data)}), status, word)
    assert snapshot(env) == before


def test_oversized_uploads_are_refused_before_reading(env) -> None:
    http: httpx.Client = env["http"]
    before = snapshot(env)
    big = b"\0" * (9 * 1024 * 1024)
    check_error(http.put("/datastore/image", params={"image": "big"}, files={"file": ("x.dcm", big)}), 413,
                "limit")

    def chunks():  # no Content-Length: a well-formed multipart stream whose size is counted as it arrives
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n\r\n'
        for _ in range(9):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--xyz--\r\n"

    r = httpx.put(env["srv"].url + "/datastore/image?image=big", content=chunks(),
                  headers={**env["srv"].headers, "content-type": "multipart/form-data; boundary=xyz"}, timeout=60)
    check_error(r, 413)
    assert snapshot(env) == before


def test_every_endpoint_but_health_requires_the_token(env) -> None:
    url = env["srv"].url
    png = env["ids"]["png"][0]
    calls = [("GET", "/info/"), ("POST", f"/infer/embedding?image={png}"), ("GET", "/datastore/?output=all"),
             ("PUT", "/datastore/image?image=x"), ("PUT", f"/datastore/label?image={png}"),
             ("GET", f"/datastore/image?image={png}"), ("GET", f"/datastore/image/info?image={png}"),
             ("DELETE", f"/datastore/image?id={png}"), ("POST", "/activelearning/random"),
             ("POST", "/train/knee_kl"), ("GET", "/train/"), ("DELETE", "/train/"), ("POST", "/scoring/embeddings"),
             ("GET", "/scoring/"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/no/such/route"),
             ("GET", "/auth/token/valid")]
    for method, path in calls:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0000000000"}, {"Authorization": TOKEN}):
            r = httpx.request(method, url + path, headers=headers, timeout=30)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.json()["error"] == "unauthorized"
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/auth/").json() == {"enabled": True}
    tok = httpx.post(url + "/auth/token", data={"username": "anyone", "password": TOKEN})
    assert tok.status_code == 200 and tok.json()["access_token"] == TOKEN
    assert httpx.post(url + "/auth/token", data={"username": "x", "password": "guess"}).status_code == 401
    assert env["srv"].proc.poll() is None


def test_monai_label_client_logs_in_with_the_token(env) -> None:
    from monailabel.client import MONAILabelClient

    c = MONAILabelClient(env["srv"].url, tmpdir=str(env["work"]))
    assert c.auth_enabled()
    c.update_auth(c.auth_token("annotator", TOKEN))
    assert c.auth_valid_token()
    assert "embedding" in c.info()["models"]


def test_cors_only_for_the_configured_origin(env) -> None:
    url = env["srv"].url
    pre = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(url + "/info/", headers={"Origin": ORIGIN, **pre})
    assert ok.headers.get("access-control-allow-origin") == ORIGIN
    bad = httpx.options(url + "/info/", headers={"Origin": "http://evil.example", **pre})
    assert bad.headers.get("access-control-allow-origin") not in ("*", "http://evil.example")
    r = httpx.get(url + "/info/", headers={"Origin": ORIGIN, **env["srv"].headers})
    assert r.headers.get("access-control-allow-origin") == ORIGIN


def test_non_loopback_bind_without_token_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORTHOFM_API_TOKEN"}
    p = subprocess.run([str(ORTHOFM), "serve", "--studies", str(tmp_path / "s"), "--host", "0.0.0.0",
                        "--port", str(free_port())], capture_output=True, text=True, timeout=300, env=env,
                       check=False)
    assert p.returncode == 2
    assert "non-loopback" in p.stderr and "token" in p.stderr


def test_no_patient_identifiers_in_logs_errors_or_stored_files(env) -> None:
    http: httpx.Client = env["http"]
    ds = mr_dataset()
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.InstitutionName = "Saint Janeforty Hospital"
    good = dicom_bytes(ds)
    r = http.put("/datastore/image", params={"image": "phi_case"}, files={"file": ("Doe_Janeforty.dcm", good)})
    assert r.status_code == 200, r.text
    bad = copy.deepcopy(ds)
    del bad.PixelData
    bodies = [check_error(http.put("/datastore/image", params={"image": "phi_bad"},
                                   files={"file": ("x.dcm", dicom_bytes(bad))}), 415)]
    bodies.append(check_error(http.post("/infer/embedding", files={"file": ("x.dcm", dicom_bytes(bad))}), 415))
    trunc = good[: len(good) - 1000]
    bodies.append(check_error(http.post("/infer/embedding", files={"file": ("x.dcm", trunc)}), 415))
    r = http.post("/infer/embedding", params={"image": "phi_case"})
    assert r.status_code == 200
    text = json.dumps(bodies) + r.text + http.get("/datastore/", params={"output": "all"}).text
    text += http.get("/datastore/image/info", params={"image": "phi_case"}).text
    stored = (env["studies"] / "phi_case.dcm").read_bytes()
    log = env["srv"].log_text()
    for s in PHI_STRINGS:
        assert s not in text, s
        assert s not in log, s
        assert s.encode() not in stored, s  # de-identified on ingest
    kept = pydicom.dcmread(str(env["studies"] / "phi_case.dcm"))
    assert kept.PatientIdentityRemoved == "YES"
    assert kept.SeriesInstanceUID != ds.SeriesInstanceUID
    assert kept.Rows == ds.Rows and kept.pixel_array.shape == ds.pixel_array.shape  # pixels untouched


def test_server_still_serves_after_everything(env) -> None:
    http: httpx.Client = env["http"]
    assert http.get("/health").status_code == 200
    assert "embedding" in http.get("/info/").json()["models"]
    assert http.post("/infer/embedding", params={"image": env["ids"]["png"][0]}).status_code == 200
    assert env["srv"].proc.poll() is None
    assert sys.version_info >= (3, 10)


def test_infer_answers_say_where_the_server_spent_its_time(env) -> None:
    """Server-Timing splits an upload's time into body parse, pool queue, handler and encode, inside total."""
    from benchmarks.bench_app import _server_timing

    http: httpx.Client = env["http"]
    png = (env["studies"] / f"{env['ids']['png'][0]}.png").read_bytes()
    r = http.post("/infer/embedding", files={"file": ("x.png", png)})
    assert r.status_code == 200, r.text
    stages = _server_timing(r.headers["server-timing"])
    assert set(stages) == {"parse", "queue", "handler", "encode", "total"}, r.headers["server-timing"]
    assert all(v >= 0 for v in stages.values())
    assert stages["handler"] > 1.0  # a real backbone forward, not an empty call
    inside = stages["parse"] + stages["queue"] + stages["handler"] + stages["encode"]
    assert inside <= stages["total"] + 0.05, stages
    bad = http.post("/infer/embedding", params={"image": "no-such-image"})
    assert bad.status_code == 404 and "total;dur=" in bad.headers["server-timing"]
