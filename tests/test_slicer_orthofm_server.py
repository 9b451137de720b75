"""Issue 9 done-when: the Slicer extension's plain-Python logic against the real OrthoFM server.

One ``orthofm serve`` process on 127.0.0.1 (bearer token on), started by this module, serving real knee
radiographs from ``../shared/data``. The backbone is the small MAE-capable fixture checkpoint from
``../shared/fixtures/weights`` so that the heatmap works without a trained normal bank and a 2-core box
answers quickly; the loop is the one an annotator runs in Slicer: connect, upload a real DICOM radiograph
and the knee MRI series, run each task, parse the results, next sample, submit both label kinds, train
and poll. Volumes are loaded with SimpleITK, as Slicer's ITK-based readers do; only Slicer is absent.
Tests run in file order and share the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_extension" / "OrthoFM"))

from OrthoFMLib import (
    AnnotationSession,
    ClassificationResult,
    EmbeddingResult,
    Geometry,
    HeatmapResult,
    LocalVolume,
    OrthoFMAuthError,
    OrthoFMClient,
    OrthoFMError,
    OrthoFMParameters,
    Segment,
    SegmentationResult,
    read_nrrd,
)
from OrthoFMLib.workflow import remap_labelmap

sitk = pytest.importorskip("SimpleITK")
pydicom_data = pytest.importorskip("pydicom.data")

ORTHOFM = Path(sys.executable).with_name("orthofm")
TOKEN = "slicer-test-token-0123456789"
KNEES = {"KL0": 2, "KL2": 2}  # grade -> images from ../shared/data/knee_kl/train/<grade>


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthoFMServe:
    """``orthofm serve`` in its own process group; stopped group-wide (with its training subprocesses)."""

    def __init__(self, studies: Path, work: Path, conf: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "orthofm-serve.log"
        cmd = [str(ORTHOFM), "serve", "--studies", str(studies), "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in conf.items():
            cmd += ["--conf", key, value]
        env = {**os.environ, "ORTHOFM_API_TOKEN": TOKEN, "ORTHOFM_TMPDIR": str(work / "tmp"),
               "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(work),
                                         start_new_session=True)

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"orthofm serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"orthofm serve not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=20)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # training subprocesses left in the group
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def env(tmp_path_factory, shared_data: Path, shared_weights: Path):
    if not ORTHOFM.exists():
        pytest.fail(f"the orthofm console script is missing at {ORTHOFM} (pip install -e .)")
    work = tmp_path_factory.mktemp("orthofm_slicer")
    studies = work / "studies"
    studies.mkdir()
    knees: dict[str, str] = {}
    for grade, count in KNEES.items():
        folder = shared_data / "knee_kl" / "train" / grade[2:]
        for path in sorted(folder.iterdir())[:count]:
            image_id = f"{grade.lower()}_{path.stem}"
            shutil.copyfile(path, studies / f"{image_id}.png")
            knees[image_id] = grade
    server = OrthoFMServe(studies, work, {"weights": str(shared_weights / "skelex_hf_vitmae_format"),
                                          "segment_labels": "bone,soft"})
    try:
        server.wait_ready()
        client = OrthoFMClient(server.url, TOKEN, timeout=120, infer_timeout=600)
        session = AnnotationSession(client, OrthoFMParameters(server_url=server.url, train_poll_s=1.0))
        yield {"server": server, "session": session, "knees": knees, "studies": studies, "work": work,
               "ids": {}}
    finally:
        server.stop()


def slicer_volume(image, name: str) -> LocalVolume:
    """What Slicer holds for an ITK-read image: (K, J, I) pixels and the IJK-to-RAS geometry."""
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = sitk.VectorIndexSelectionCast(image, 0)
    return LocalVolume(name, sitk.GetArrayFromImage(image),
                       Geometry.from_lps(image.GetSpacing(), image.GetOrigin(),
                                         np.array(image.GetDirection()).reshape(3, 3)))


def knee_mri(shared_data: Path) -> LocalVolume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(shared_data / "knee_mri_dess")))
    return slicer_volume(reader.Execute(), "knee_mri_dess")


# ==========================================================================================================
def test_connect_needs_the_token_and_lists_the_four_tasks(env):
    server = env["server"]
    with pytest.raises(OrthoFMAuthError, match="needs a valid access token.*Enter the token") as err:
        OrthoFMClient(server.url, timeout=30).info()
    assert err.value.status == 401
    with pytest.raises(OrthoFMAuthError, match="rejected or has expired"):
        OrthoFMClient(server.url, "wrong-token-0123456789", timeout=30).info()
    info = env["session"].connect()
    assert info.name == "OrthoFM"
    assert {n: t.kind for n, t in info.tasks.items()} == {
        "knee_kl": "classification", "abnormality": "heatmap", "segmentation": "segmentation",
        "embedding": "embedding"}
    assert info.tasks["knee_kl"].labels == ("KL0", "KL1", "KL2", "KL3", "KL4")
    assert info.tasks["segmentation"].label_ids == {"bone": 1, "soft": 2}
    assert "knee_kl" in info.trainers and "random" in info.strategies


def test_upload_dicom_radiograph_and_mri_series(env, shared_data, tmp_path):
    session = env["session"]
    env["ids"]["cr"] = session.upload_file(pydicom_data.get_testdata_file("RG3_UNCR.dcm"), "rg3_cr")
    mri = knee_mri(shared_data)
    assert mri.array.shape == (24, 512, 512)
    env["ids"]["mri"] = session.upload_volume(mri)
    env["mri"] = mri
    stored = session.client.datastore("all")["objects"]
    assert {env["ids"]["cr"], env["ids"]["mri"]} <= set(stored)
    back = session.client.download_image(env["ids"]["mri"], tmp_path)
    assert np.array_equal(read_nrrd(back.read_bytes()).array, mri.array)
    assert session.upload_volume(mri) == env["ids"]["mri"]  # same pixels: not sent twice


def test_heatmap_has_the_exact_geometry_of_the_uploaded_volume(env):
    session, mri = env["session"], env["mri"]
    heat = session.run_task("abnormality", image_id=env["ids"]["mri"], params={"method": "recon"})
    assert isinstance(heat, HeatmapResult)
    assert heat.array.shape == mri.array.shape and heat.array.dtype == np.float32
    assert np.isfinite(heat.array).all() and heat.value_range[1] > heat.value_range[0]
    assert heat.score is not None and np.isfinite(heat.score)
    difference = np.abs(heat.geometry.ijk_to_ras() - mri.geometry.ijk_to_ras()).max()
    assert difference < 1e-4, (heat.geometry, mri.geometry)
    corner = np.array([511, 511, 23, 1.0])  # the far corner voxel lands on the same RAS point
    assert np.allclose(heat.geometry.ijk_to_ras() @ corner, mri.geometry.ijk_to_ras() @ corner, atol=1e-3)

    cr = slicer_volume(sitk.ReadImage(pydicom_data.get_testdata_file("RG3_UNCR.dcm")), "rg3")
    heat_cr = session.run_task("abnormality", image_id=env["ids"]["cr"], params={"method": "recon"})
    assert heat_cr.array.shape == cr.array.shape == (1, 1760, 1760)
    assert heat_cr.geometry.is_close(cr.geometry, atol=1e-4)


def test_heatmap_of_a_single_slice_volume_as_slicer_sends_a_radiograph(env):
    """Slicer holds a 2-D image as a (1, rows, columns) volume and sends it as NRRD: the oblique MR slice
    makes any axis, sign or LPS/RAS slip visible."""
    session = env["session"]
    slice_volume = slicer_volume(sitk.ReadImage(pydicom_data.get_testdata_file("MR2_UNCR.dcm")), "mr2_slice")
    assert slice_volume.array.shape == (1, 1024, 1024)
    assert abs(slice_volume.geometry.direction_matrix[0, 0]) < 0.9  # oblique, not axis-aligned
    image_id = session.upload_volume(slice_volume)
    heat = session.run_task("abnormality", image_id=image_id, params={"method": "recon"})
    assert heat.array.shape == slice_volume.array.shape
    assert np.abs(heat.geometry.ijk_to_ras() - slice_volume.geometry.ijk_to_ras()).max() < 1e-4


def test_embedding_of_the_radiograph(env):
    result = env["session"].run_task("embedding", image_id=env["ids"]["cr"])
    assert isinstance(result, EmbeddingResult)
    assert result.vector.ndim == 1 and result.vector.size > 0
    assert np.isfinite(result.vector).all() and result.vector.std() > 0


def test_class_labels_then_train_and_poll_then_grade(env):
    session, knees = env["session"], env["knees"]
    with pytest.raises(OrthoFMError, match="no trained knee_kl head yet") as err:
        session.run_task("knee_kl", image_id=env["ids"]["cr"])
    assert err.value.status == 409
    for image_id, grade in knees.items():
        reply = session.submit_class_label(image_id, grade)
        assert reply["image"] == image_id
    stored = session.client.datastore("all")["objects"]
    assert all("cls" in stored[i]["labels"] for i in knees)

    states: list[str] = []
    # the knee_kl trainer has no epochs setting: epochs= is then not sent (the server refuses unknown keys)
    final = session.train("knee_kl", epochs=5, on_status=lambda s: states.append(s["status"]), timeout=900)
    assert final["status"] == "DONE" and states[-1] == "DONE"
    assert any("published knee_kl" in line for line in final.get("details", [])), final.get("details")

    grades = {}
    for image_id in (env["ids"]["cr"], env["ids"]["mri"], next(iter(knees))):
        grades[image_id] = grade = session.run_task("knee_kl", image_id=image_id)
        assert isinstance(grade, ClassificationResult)
        probs = np.array([c.probability for c in grade.classes])
        assert abs(probs.sum() - 1) < 1e-4 and (probs >= 0).all() and not grade.scores_were_logits
        assert {c.label for c in grade.classes} <= set(KNEES) | {"KL1", "KL3", "KL4"}
        assert grade.grade == grade.raw["label"] and grade.confidence == pytest.approx(probs.max(), abs=1e-6)
        assert 0.0 <= grade.expected_grade <= 4.0 and "head" in grade.extras
    # the class the annotator picks is saved with what the model said
    cr_grade = grades[env["ids"]["cr"]]
    reply = session.submit_class_label(env["ids"]["cr"], cr_grade.classes[0].label, result=cr_grade)
    assert reply["image"] == env["ids"]["cr"]


def test_segmentation_label_map_then_few_shot_segmentation(env, tmp_path):
    session, studies = env["session"], env["studies"]
    first, second = sorted(env["knees"])[:2]
    image = slicer_volume(sitk.ReadImage(str(studies / f"{first}.png")), first)
    # an openly derived label map, as Segment Editor would export it (segments 1..N in list order)
    a = image.array.astype(np.float32)
    labelmap = np.zeros(a.shape, np.uint8)
    labelmap[a > np.percentile(a, 75)] = 2
    labelmap[(a > np.percentile(a, 45)) & (a <= np.percentile(a, 75))] = 1
    exported = [Segment("soft", 1, (0.8, 0.5, 0.5)), Segment("bone", 2, (0.9, 0.9, 0.8))]
    labelmap, segments = remap_labelmap(labelmap, exported, session.info.tasks["segmentation"].label_ids)
    assert [(s.name, s.value) for s in segments] == [("soft", 2), ("bone", 1)]
    reply = session.submit_segmentation(first, labelmap, image.geometry, segments)
    assert reply["label"] == first
    back = read_nrrd(session.client.download_label(first, "final", tmp_path).read_bytes())
    assert np.array_equal(back.array, labelmap) and back.geometry.is_close(image.geometry)

    target = slicer_volume(sitk.ReadImage(str(studies / f"{second}.png")), second)
    seg = session.run_task("segmentation", image_id=second)
    assert isinstance(seg, SegmentationResult) and seg.is_seg_nrrd
    assert [s.name for s in seg.segments] == ["bone", "soft"]
    merged, _ = seg.labelmap()
    assert merged.shape == target.array.shape and set(np.unique(merged)) <= {0, 1, 2}
    assert seg.geometry.is_close(target.geometry, atol=1e-4)


def test_next_sample_is_downloaded_ready_to_load(env, tmp_path):
    sample = env["session"].next_sample(tmp_path, "random")
    assert sample is not None and sample.path.exists()
    assert sample.info["id"] == sample.image_id
    image = sitk.ReadImage(str(sample.path)) if not sample.is_series else None
    assert sample.is_series or image.GetNumberOfPixels() > 0


def test_server_errors_are_readable(env):
    session = env["session"]
    with pytest.raises(OrthoFMError, match=r"HTTP 404: image 'nope' is not in the datastore"):
        session.run_task("embedding", image_id="nope")
    with pytest.raises(OrthoFMError, match=r"HTTP 422\): unknown parameter 'bogus'"):
        session.client.infer("embedding", image_id=env["ids"]["cr"], params={"bogus": 1})
    with pytest.raises(OrthoFMError, match="HTTP 422"):
        session.client.save_class_label(env["ids"]["cr"], "KL2", tag="Not-A-Tag")
