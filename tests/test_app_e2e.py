"""Issue 8 end to end: a real server on 127.0.0.1 over real images, through MONAI Label's client and plain HTTP.

One server for the module (starting one costs tens of seconds on a busy 2-core box). The tests run in file
order: info -> embeddings/next-sample -> labels -> training knee_kl twice -> abnormality -> segmentation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import nrrd
import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from test_app_harness import ServerProcess, build_studies

TASKS = {"knee_kl", "abnormality", "segmentation", "embedding"}
STRATEGIES = {"random", "typiclust", "probcover", "coreset", "uncertainty", "hybrid"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    work = tmp_path_factory.mktemp("e2e")
    studies = work / "studies"
    ids = build_studies(studies, shared_data)
    srv = ServerProcess(studies=studies, workdir=work, conf={"segment_labels": "bone,soft"}).start()
    yield {"srv": srv, "ids": ids, "studies": studies, "work": work,
           "client": MONAILabelClient(srv.url, tmpdir=str(work)), "http": srv.client()}
    srv.kill()


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def train(env, model: str, params: dict | None = None, timeout: float = 900) -> dict:
    client: MONAILabelClient = env["client"]
    started = client.train_start(model, params or {})
    task_id = started["id"]

    def done():
        st = client.train_status()
        return st if st["id"] == task_id and st["status"] in ("DONE", "ERROR") else None

    st = wait_for(done, timeout, f"training {model}", interval=2)
    assert st["status"] == "DONE", "\n".join(st.get("details", []))
    return st


def infer_json(env, model: str, image: str, params: dict | None = None) -> dict:
    r = env["http"].post(f"/infer/{model}", params={"image": image, "output": "json"},
                         data={"params": json.dumps(params or {})})
    assert r.status_code == 200, r.text
    return r.json()


def save_class_label(env, image: str, label) -> None:
    path = env["work"] / f"{image}.json"
    path.write_text(json.dumps({"label": label}))
    res = env["client"].save_label(image, str(path), tag="cls")
    assert res["image"] == image


def test_info_lists_tasks_strategies_and_scoring(env) -> None:
    info = env["client"].info()
    assert TASKS <= set(info["models"])
    assert info["models"]["knee_kl"]["type"] == "classification"
    assert STRATEGIES <= set(info["strategies"])
    assert "embeddings" in info["scoring"]
    assert {"knee_kl", "abnormality", "segmentation"} <= set(info["trainers"])
    assert info["labels"] == {"bone": 1, "soft": 2}  # segment names from --conf, not class names
    assert info["datastore"]["total"] == 13
    plain = env["http"].get("/info/").json()
    assert set(plain["models"]) == set(info["models"])


def test_embedding_for_png_cr_and_mri_series(env) -> None:
    ids = env["ids"]
    dims = set()
    for image in (ids["png"][0], ids["cr"][0], ids["mr"][0], ids["series"][0]):
        _, params = env["client"].infer("embedding", image, {})
        body = json.loads(params) if isinstance(params, (bytes, str)) else params
        vec = np.asarray(body["embedding"])
        assert np.isfinite(vec).all() and vec.std() > 0
        dims.add(vec.shape[0])
    assert len(dims) == 1


def wait_until_all_embedded(env) -> dict:
    def indexed():
        info = env["http"].get("/info/").json()["orthofm"]["embeddings"]
        return info["indexed"] >= 13 and info
    return wait_for(indexed, 600, "all 13 images embedded in the background", interval=3)


def test_background_embedder_indexes_every_image(env) -> None:
    wait_until_all_embedded(env)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_next_sample_returns_an_unlabeled_image(env, strategy: str) -> None:
    res = env["client"].next_sample(strategy, {"reserve_seconds": 0})
    assert res["id"] in set(env["client"].datastore()["objects"])
    labels = env["client"].datastore()["objects"][res["id"]]["labels"]
    assert not [t for t in labels if t != "original"]
    assert res["selected_by"] == strategy


@pytest.mark.parametrize("strategy", ["uncertainty", "hybrid"])
def test_uncertainty_without_a_trained_head_falls_back_to_the_cold_start_strategy(env, strategy: str) -> None:
    wait_until_all_embedded(env)  # before that, every strategy picks at random
    res = env["client"].next_sample(strategy, {"reserve_seconds": 0, "task": "no_head_task"})
    assert res["selected_by"] == strategy and res["fallback"] == "coreset"  # the replay's cold-start winner
    assert "no trained no_head_task head" in res["note"]
    labels = env["client"].datastore()["objects"][res["id"]]["labels"]
    assert not [t for t in labels if t != "original"]


def test_uploaded_image_is_stored_and_inferable(env, shared_data: Path) -> None:
    src = min((shared_data / "knee_kl" / "val" / "2").iterdir())
    res = env["client"].upload_image(str(src), "upload_knee", {})
    assert res["image"] == "upload_knee"
    assert (env["studies"] / "upload_knee.png").read_bytes() == src.read_bytes()
    # infer on a file that is NOT stored (MONAI Label's `file` field)
    _, params = env["client"].infer("embedding", "", {}, file=str(src))
    body = json.loads(params)
    assert len(body["embedding"]) > 0


@pytest.mark.timeout(1800)  # two training subprocesses
def test_class_labels_train_knee_kl_and_retraining_changes_predictions(env) -> None:
    ids = env["ids"]["png"]
    for image in ids:
        save_class_label(env, image, f"KL{int(image[2])}")
    ds = env["client"].datastore()
    assert all("cls" in ds["objects"][i]["labels"] for i in ids)
    st = train(env, "knee_kl")
    assert any("published knee_kl" in line for line in st["details"])
    probes = [env["ids"]["cr"][0], env["ids"]["mr"][0], env["ids"]["series"][0], "upload_knee"]
    first = {}
    for image in probes:
        out = infer_json(env, "knee_kl", image)
        probs = np.asarray([p["score"] for p in out["prediction"]])
        assert probs.sum() == pytest.approx(1.0, abs=1e-4) and (probs >= 0).all()
        assert 0.0 <= out["expected_grade"] <= 4.0
        assert out["label"] in out["probabilities"]
        assert out["precision"] in ("bfloat16", "float32", "float32 (near-tie re-check)")
        first[image] = probs
    assert infer_json(env, "knee_kl", env["ids"]["cr"][0])["orthofm"]["anatomy"] in (None, "knee")
    # relabel (reverse the grades) and retrain: the served head changes without a restart
    for image in ids:
        save_class_label(env, image, f"KL{4 - int(image[2])}")
    train(env, "knee_kl")
    changed = [not np.allclose(first[i], [p["score"] for p in infer_json(env, "knee_kl", i)["prediction"]])
               for i in probes]
    assert any(changed)
    assert env["http"].get("/info/").json()["train_stats"]["knee_kl"]["published"] == "v0002"


def _read_nrrd_bytes(data: bytes, work: Path, name: str) -> tuple[np.ndarray, dict]:
    path = work / name
    path.write_bytes(data)
    return nrrd.read(str(path))


def test_abnormality_heatmap_for_png_cr_and_mri(env) -> None:
    # KL0 images were labelled above; they make this project's normal bank
    train(env, "abnormality")
    http: httpx.Client = env["http"]
    for kind in ("png", "cr", "series"):
        image = env["ids"][kind][0]
        r = http.post("/infer/abnormality", params={"image": image, "output": "image"},
                      data={"params": json.dumps({"method": "patchknn", "anatomy": "knee"})})
        assert r.status_code == 200, r.text
        arr, header = _read_nrrd_bytes(r.content, env["work"], f"hm_{kind}.nrrd")
        assert arr.dtype == np.float32 and np.isfinite(arr).all() and arr.max() > arr.min()
        assert header.get("encoding") == "raw", "float heatmaps are written raw: gzip costs ~10 s per MRI volume"
        if kind == "series":
            assert arr.shape == (512, 512, 6)
            assert np.linalg.norm(np.asarray(header["space directions"])[2]) == pytest.approx(1.5, rel=0.05)
        elif kind == "cr":
            assert arr.shape == (1760, 1760, 1)  # (W, H, 1): 2D kept with its DICOM geometry
        else:
            assert arr.shape == (224, 224, 1)
        body = infer_json(env, "abnormality", image, {"method": "patchknn", "anatomy": "knee"})
        assert np.isfinite(body["score"]) and isinstance(body["regions"], list)
        assert body["result_kind"] == "heatmap"


def _threshold_label(env, image: str) -> Path:
    """An openly derived label map on the image's own grid: bright pixels 'bone', mid-grey 'soft'."""
    from PIL import Image

    a = np.asarray(Image.open(env["studies"] / f"{image}.png").convert("L"), dtype=np.float32)
    lab = np.zeros(a.shape, np.uint8)
    lab[a > np.percentile(a, 75)] = 1
    lab[(a > np.percentile(a, 45)) & (a <= np.percentile(a, 75))] = 2
    path = env["work"] / f"{image}_label.nrrd"
    nrrd.write(str(path), lab.T[:, :, None].copy())
    return path


def test_label_map_is_stored_and_segmentation_works_few_shot_then_with_decoder(env) -> None:
    ids = env["ids"]["png"]
    uploaded = {}
    for image in ids[:3]:
        uploaded[image] = _threshold_label(env, image)
        res = env["client"].save_label(image, str(uploaded[image]), tag="final")
        assert res["label"] == image
    stored = env["studies"] / "labels" / "final" / f"{ids[0]}.nrrd"
    assert stored.read_bytes() == uploaded[ids[0]].read_bytes()
    for kind, ext in (("png", ".seg.nrrd"), ("cr", ".nrrd"), ("series", ".seg.nrrd")):
        image = env["ids"][kind][0] if kind != "png" else ids[5]
        result_file, params = env["client"].infer("segmentation", image, {"result_extension": ext})
        assert params["method"] == "knn" and params["support_images"] == 3
        arr, header = nrrd.read(result_file)
        assert set(np.unique(arr).tolist()) <= {0, 1, 2}
        if ext == ".seg.nrrd":
            assert header["Segment0_Name"] == "bone" and header["Segment1_Name"] == "soft"
    train(env, "segmentation", {"epochs": 20})
    body = infer_json(env, "segmentation", ids[6])
    assert body["method"] == "decoder"
    assert sum(body["pixels"].values()) > 0
