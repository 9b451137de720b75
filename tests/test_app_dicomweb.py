"""DICOMweb datastore against a real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on loopback.

Orthanc runs from a JSON config in a temp folder, in its own process group: HTTP only (no DICOM port), remote
access refused. Real DICOMs go in by ``POST /instances``: a CR, an MR slice, a knee MRI series and a CT that the
CR/DX/MR search filter must leave out. Without Orthanc the test skips with the reason; under CI=true it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from monailabel.client import MONAILabelClient
from test_app_harness import ServerProcess, free_port, pydicom_file

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _require_orthanc() -> None:
    if os.path.exists(ORTHANC) and DICOMWEB_PLUGIN.is_file():
        return
    reason = "Orthanc with the DICOMweb plugin is not installed (apt-get install -y orthanc orthanc-dicomweb)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must not skip the DICOMweb test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    _require_orthanc()
    root = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    cfg = {"Name": "orthofm-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
           "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
           "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (root / "config.json").write_text(json.dumps(cfg))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([ORTHANC, str(root / "config.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
        yield {"url": url, "root": root}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def upload(orthanc: dict, path: Path) -> str:
    r = httpx.post(orthanc["url"] + "/instances", content=path.read_bytes(), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["ParentSeries"]


def test_dicomweb_series_served_filtered_and_labelled(orthanc: dict, tmp_path: Path, shared_data: Path) -> None:
    for name in ("RG3_UNCR.dcm", "MR2_UNCR.dcm", "CT_small.dcm"):
        upload(orthanc, pydicom_file(name))
    knee = sorted((shared_data / "knee_mri_dess").glob("*.dcm"))[10:14]
    for f in knee:
        upload(orthanc, f)
    import pydicom

    uids = {m: str(pydicom.dcmread(str(pydicom_file(f)), stop_before_pixels=True).SeriesInstanceUID)
            for m, f in (("CR", "RG3_UNCR.dcm"), ("MR", "MR2_UNCR.dcm"), ("CT", "CT_small.dcm"))}
    uids["knee"] = str(pydicom.dcmread(str(knee[0]), stop_before_pixels=True).SeriesInstanceUID)

    srv = ServerProcess(studies=orthanc["url"] + "/dicom-web", workdir=tmp_path,  # type: ignore[arg-type]
                        conf={"embed_on_ingest": "false", "models": "embedding,knee_kl"},
                        env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp_path / "cache")}).start()
    try:
        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path))
        info = client.info()
        assert info["datastore"]["total"] == 3 and info["datastore"]["source"] == "dicomweb"
        with srv.client() as http:
            listed = set(http.get("/datastore/", params={"output": "all"}).json()["objects"]) | set()
            sample = client.next_sample("random", {"reserve_seconds": 0})
            assert sample["id"] in {uids["CR"], uids["MR"], uids["knee"]}
            for key in ("CR", "knee"):
                _, params = client.infer("embedding", uids[key], {})
                assert len(json.loads(params)["embedding"]) > 0
            r = http.post("/infer/embedding", params={"image": uids["CT"]})
            assert r.status_code == 404  # filtered out: CT is not served
            label = tmp_path / "cls.json"
            label.write_text('{"label": "KL1"}')
            assert client.save_label(uids["knee"], str(label), tag="cls")["label"] == uids["knee"]
            got = http.get("/datastore/label", params={"label": uids["knee"], "tag": "cls"})
            assert got.status_code == 200 and got.content == label.read_bytes()
            ds = http.get("/datastore/", params={"output": "all"}).text
            assert "PatientID" not in ds  # no patient identifiers copied into the datastore JSON
        assert listed <= {uids["CR"], uids["MR"], uids["knee"]}
    finally:
        srv.kill()
