"""OrthoFMLib pieces checked against independent real implementations.

Geometry against ITK's own index-to-physical mapping; our NRRD files against SimpleITK and pynrrd,
and theirs (and Slicer-written ``.seg.nrrd`` files shipped with slicerio) against our reader;
multipart replies as MONAI Label builds them (requests_toolbelt). MONAI Label's own writers
(ClassificationWriter, write_seg_nrrd) are exercised through a real server in test_slicer_server.py.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_extension" / "OrthoFM"))

from OrthoFMLib import (
    BackgroundJob,
    Geometry,
    OrthoFMCancelled,
    OrthoFMFormatError,
    OrthoFMParameters,
    Segment,
    parse_classification,
    parse_embedding,
    parse_heatmap,
    parse_segmentation,
    parse_server_info,
    read_nrrd,
    write_nrrd,
)
from OrthoFMLib.colors import heatmap_table, segment_color
from OrthoFMLib.multipart import FormField, FormFile, MultipartBody, parse_multipart
from OrthoFMLib.workflow import describe_result, encode_labelmap, remap_labelmap, safe_id

sitk = pytest.importorskip("SimpleITK")
nrrd = pytest.importorskip("nrrd")

# An oblique, anisotropic grid: any transposition, sign or LPS/RAS slip changes some entry.
_ROT = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
OBLIQUE_LPS = {"spacing": (0.3125, 0.45, 1.5), "origin": (-28.9, 68.4, 79.8), "direction": _ROT}


def _oblique_image(shape_kji=(4, 5, 6), dtype=np.int16):
    array = (np.arange(np.prod(shape_kji)).reshape(shape_kji) % 251).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(OBLIQUE_LPS["spacing"])
    image.SetOrigin(OBLIQUE_LPS["origin"])
    image.SetDirection(tuple(OBLIQUE_LPS["direction"].ravel()))
    return array, image


# ============================================================================================ geometry
def test_geometry_maps_voxels_where_itk_does():
    _, image = _oblique_image()
    geom = Geometry.from_lps(image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3))
    for ijk in [(0, 0, 0), (5, 4, 3), (2.5, 1.25, 0.5)]:
        lps = np.array(image.TransformContinuousIndexToPhysicalPoint(ijk))
        ras = geom.ijk_to_ras() @ np.array([*ijk, 1.0])
        assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)
    assert np.allclose(geom.ijk_to_ras() @ geom.ras_to_ijk(), np.eye(4))
    assert Geometry.from_ijk_to_ras(geom.ijk_to_ras()).is_close(geom, atol=1e-12)
    assert np.allclose(geom.origin_lps(), image.GetOrigin())


def test_geometry_rejects_nonsense():
    with pytest.raises(ValueError, match="positive"):
        Geometry(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="singular"):
        Geometry(directions=((1, 0, 0), (1, 0, 0), (0, 0, 1)))
    with pytest.raises(ValueError, match="4x4"):
        Geometry.from_ijk_to_ras(np.eye(3))


# ============================================================================================ NRRD
@pytest.mark.parametrize("encoding", ["gzip", "raw"])
def test_our_nrrd_is_read_identically_by_simpleitk_and_pynrrd(tmp_path, encoding):
    array, image = _oblique_image()
    geom = Geometry.from_lps(image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3))
    path = tmp_path / "oblique.nrrd"
    path.write_bytes(write_nrrd(array, geom, encoding=encoding, key_values={"Segment0_Name": "bone"}))
    itk = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(itk), array)
    assert np.allclose(itk.GetSpacing(), image.GetSpacing()) and np.allclose(itk.GetOrigin(), image.GetOrigin())
    assert np.allclose(itk.GetDirection(), image.GetDirection())
    data, header = nrrd.read(str(path), index_order="C")
    assert np.array_equal(data, array) and header["Segment0_Name"] == "bone"
    assert np.allclose(header["space directions"], (OBLIQUE_LPS["direction"] * OBLIQUE_LPS["spacing"]).T)
    back = read_nrrd(path.read_bytes())
    assert np.array_equal(back.array, array) and back.geometry.is_close(geom, atol=1e-12)


def test_simpleitk_written_nrrd_2d_3d_and_float(tmp_path):
    array, image = _oblique_image(dtype=np.float32)
    sitk.WriteImage(image, str(tmp_path / "v.nrrd"), True)
    ours = read_nrrd((tmp_path / "v.nrrd").read_bytes())
    want = Geometry.from_lps(image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3))
    assert ours.array.dtype == np.float32 and np.array_equal(ours.array, array)
    assert ours.geometry.is_close(want, atol=1e-9)
    # a 2-D image file becomes a single-slice volume, as Slicer loads it
    flat = sitk.GetImageFromArray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    flat.SetSpacing((0.2, 0.3))
    flat.SetOrigin((5.0, 6.0))
    sitk.WriteImage(flat, str(tmp_path / "flat.nrrd"))
    ours = read_nrrd((tmp_path / "flat.nrrd").read_bytes())
    assert ours.was_2d and ours.array.shape == (1, 3, 4)
    assert np.allclose(ours.geometry.ijk_to_ras() @ [3, 2, 0, 1], [-(5 + 0.6), -(6 + 0.6), 0, 1])


def test_pynrrd_big_endian_and_spacings_only(tmp_path):
    array = np.arange(24, dtype=">i2").reshape(2, 3, 4)
    nrrd.write(str(tmp_path / "be.nrrd"), array, {"encoding": "raw", "spacings": [0.5, 2.0, 3.0]}, index_order="C")
    ours = read_nrrd((tmp_path / "be.nrrd").read_bytes())
    assert np.array_equal(ours.array, array.astype(np.int16)) and ours.array.dtype == np.int16
    # 'sizes' and 'spacings' list the fastest axis (I) first; ITK reads the file the same way
    assert ours.geometry.spacing == pytest.approx((0.5, 2.0, 3.0))
    assert sitk.ReadImage(str(tmp_path / "be.nrrd")).GetSpacing() == pytest.approx(ours.geometry.spacing)


def test_reader_errors_name_the_problem():
    with pytest.raises(OrthoFMFormatError, match="not a NRRD file"):
        read_nrrd(b"\x89PNG...")
    header = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n"
    with pytest.raises(OrthoFMFormatError, match="truncated"):
        read_nrrd(header + b"\0" * 7)
    with pytest.raises(OrthoFMFormatError, match="could not be decompressed"):
        read_nrrd(header.replace(b"raw", b"gzip") + b"not gzip")
    with pytest.raises(OrthoFMFormatError, match="detached"):
        read_nrrd(b"NRRD0004\ntype: float\ndimension: 1\nsizes: 2\nencoding: raw\ndata file: x.raw\n\n")


@pytest.mark.parametrize("name", ["Segmentation.seg.nrrd", "SegmentationOverlapping.seg.nrrd"])
def test_slicer_written_seg_nrrd_matches_slicerio(name):
    slicerio = pytest.importorskip("slicerio")
    path = Path(slicerio.__file__).parent / "data" / name
    reference = slicerio.read_segmentation(str(path))
    result = parse_segmentation(path.read_bytes(), task="seg", file_name=name)
    voxels = reference["voxels"]  # slicerio: (I, J, K) or (layer, I, J, K)
    expected = np.moveaxis(voxels, 0, -1).transpose(2, 1, 0, 3) if voxels.ndim == 4 else voxels.transpose(2, 1, 0)
    assert np.array_equal(result.array, expected)
    ijk_to_ras = np.diag([-1, -1, 1, 1]) @ reference["ijkToLPS"]
    assert np.allclose(result.geometry.ijk_to_ras(), ijk_to_ras)
    got = [(s.segment_id, s.name, s.value, s.layer, s.color) for s in result.segments]
    want = [(s["id"], s["name"], s["labelValue"], s.get("layer", 0), tuple(s["color"])) for s in reference["segments"]]
    assert [g[:4] for g in got] == [w[:4] for w in want]
    assert all(np.allclose(g[4], w[4]) for g, w in zip(got, want))
    merged, segments = result.labelmap()
    assert merged.shape == result.array.shape[:3] and len(segments) == len(result.segments)


# ============================================================================================ results
def test_classification_variants_and_errors():
    r = parse_classification({"probabilities": {"normal": 0.3, "abnormal": 0.7}, "expected_grade": 0.7,
                              "model": "m"}, task="t")
    assert r.grade == "abnormal" and r.expected_grade == 0.7 and r.extras == {"model": "m"}
    r = parse_classification({"logits": [2.0, -1.0, 0.5]}, labels=["a", "b", "c"])
    assert r.scores_were_logits and r.grade == "a"
    assert sum(c.probability for c in r.classes) == pytest.approx(1.0)
    r = parse_classification({"prediction": [{"idx": 1, "label": "y", "score": 0.4},
                                             {"idx": 0, "label": "x", "score": 0.6}], "grade": 1})
    assert [c.label for c in r.classes] == ["x", "y"] and r.grade == "y" and r.confidence == pytest.approx(0.4)
    with pytest.raises(OrthoFMFormatError, match="no class scores"):
        parse_classification({"result": {}}, task="knee_kl")
    with pytest.raises(OrthoFMFormatError, match="non-numeric"):
        parse_classification({"probabilities": ["high", "low"]}, task="knee_kl")


def test_heatmap_and_embedding_parsing():
    geom = Geometry.from_lps(**OBLIQUE_LPS)
    heat = np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    r = parse_heatmap(write_nrrd(heat, geom), {"result": {"score": 0.7, "regions": [{"peak": 1}], "threshold": 0.4}},
                      task="abnormality")
    assert r.geometry.is_close(geom) and np.array_equal(r.array, heat)
    assert (r.score, r.suggested_threshold, r.value_range) == (0.7, 0.4, (0.0, 1.0))
    assert r.normal_rank is None and "normal images" not in describe_result(r)
    ranked = parse_heatmap(write_nrrd(heat, geom), {"score": 0.7, "scores": {"global": 0.2, "global_normal_rank": 0.93}},
                           task="abnormality")
    assert ranked.normal_rank == 0.93 and "whole image above 93% of normal images" in describe_result(ranked)
    with pytest.raises(OrthoFMFormatError, match="multi-channel"):
        parse_heatmap(write_nrrd(np.zeros((2, 3, 4, 2), np.float32), geom), task="abnormality")
    e = parse_embedding({"embedding": [[1, 2], [3, 4]], "model": "vits16"})
    assert e.vector.tolist() == [1, 2, 3, 4] and e.model == "vits16"
    with pytest.raises(OrthoFMFormatError, match="no embedding"):
        parse_embedding({"score": 1})


def test_labelmap_encode_remap_and_label_names():
    geom = Geometry.from_lps(**OBLIQUE_LPS)
    labelmap = np.zeros((2, 3, 4), np.uint8)
    labelmap[0, 0, :2], labelmap[1, 2, 3] = 1, 2
    exported = [Segment("tibia", 1, (0, 1, 0)), Segment("lesion", 2, (1, 0, 1))]
    remapped, segments = remap_labelmap(labelmap, exported, {"background": 0, "femur": 1, "tibia": 2})
    assert [(s.name, s.value) for s in segments] == [("tibia", 2), ("lesion", 3)]
    assert remapped[0, 0, 0] == 2 and remapped[1, 2, 3] == 3 and (remapped > 0).sum() == 3
    data, info = encode_labelmap(remapped, geom, segments)
    parsed = parse_segmentation(data)
    assert np.array_equal(parsed.array, remapped) and [s.name for s in parsed.segments] == ["tibia", "lesion"]
    assert info[0]["name"] == "tibia" and info[0]["idx"] == 2
    with pytest.raises(ValueError, match=r"values \[7\] that no segment describes"):
        encode_labelmap(np.full((1, 2, 2), 7, np.uint8), geom, segments)
    # a plain label map gets names from the task's labels
    plain = parse_segmentation(write_nrrd(remapped, geom), labels={"background": 0, "tibia": 2, "lesion": 3})
    assert [(s.name, s.value) for s in plain.segments] == [("tibia", 2), ("lesion", 3)]
    assert safe_id("Knee MRI (DESS).nrrd") == "Knee_MRI_DESS_nrrd"


def test_server_info_kinds():
    info = parse_server_info({"name": "a", "models": {
        "knee_kl": {"type": "classification", "labels": ["KL0", "KL1"]},
        "abnormality": {"type": "segmentation", "labels": None, "description": "Abnormality heatmap"},
        "segmentation": {"type": "segmentation", "labels": {"bone": 1, "background": 0}},
        "embedding": {"type": "others", "description": "Image embedding"},
        "custom": {"type": "others", "config": {"orthofm_output": "heatmap"}}},
        "trainers": {"knee_kl": {"config": {"max_epochs": 3}}}, "strategies": {"random": {}}})
    assert {t.name: t.kind for t in info.tasks.values()} == {
        "knee_kl": "classification", "abnormality": "heatmap", "segmentation": "segmentation",
        "embedding": "embedding", "custom": "heatmap"}
    assert info.tasks["segmentation"].labels == ("background", "bone")
    assert info.trainers == {"knee_kl": {"max_epochs": 3}} and info.strategies == ("random",)
    with pytest.raises(KeyError, match="offered: abnormality, custom"):
        info.task("nope")


# ============================================================================================ multipart
def test_parse_multipart_as_monailabel_sends_it():
    toolbelt = pytest.importorskip("requests_toolbelt")
    payload = bytes(range(256)) * 50 + b"\r\n--not-the-boundary\r\n\r\n"
    encoder = toolbelt.MultipartEncoder(fields={
        "params": (None, json.dumps({"score": 0.5}), "application/json"),
        "image": ("tmpabc.nrrd", payload, "application/octet-stream")})
    body = encoder.to_string()
    parts = parse_multipart(body, encoder.content_type)
    assert [(p.name, p.filename) for p in parts] == [("params", None), ("image", "tmpabc.nrrd")]
    assert json.loads(parts[0].data) == {"score": 0.5} and parts[1].data == payload
    with pytest.raises(OrthoFMFormatError, match="no closing boundary"):
        parse_multipart(body[:-300], encoder.content_type)


def test_our_multipart_body_length_and_roundtrip(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"\x00\r\n" * 1000)
    body = MultipartBody([FormField("params", '{"a": "\u00e9"}'), FormFile("file", 'we"ird.nrrd', path=str(f))])
    raw = b"".join(body.chunks(chunk_size=100))
    assert len(body) == len(raw)
    parts = parse_multipart(raw, body.content_type)
    assert parts[0].data.decode() == '{"a": "\u00e9"}' and parts[1].data == f.read_bytes()
    assert parts[1].filename == 'we"ird.nrrd'


# ============================================================================================ parameters, colours, jobs
def test_parameters_settings_round_trip():
    p = OrthoFMParameters(server_url="http://10.0.0.5:8001", token="secret", heatmap_opacity=0.3,
                          upload_to_datastore=False, train_max_epochs=3)
    stored = p.to_settings()
    assert "OrthoFM/token" not in stored and stored["OrthoFM/upload_to_datastore"] == "false"
    back = OrthoFMParameters.from_settings(stored)
    assert back.server_url == p.server_url and back.heatmap_opacity == 0.3 and not back.upload_to_datastore
    assert back.train_max_epochs == 3 and back.token == ""
    p.remember_token = True
    assert OrthoFMParameters.from_settings(p.to_settings()).token == "secret"
    # QSettings may hand back typed values or junk: junk falls back to the default
    odd = OrthoFMParameters.from_settings({"OrthoFM/timeout_s": "abc", "OrthoFM/remember_token": True,
                                           "OrthoFM/train_max_epochs": "7.0"})
    assert odd.timeout_s == 30.0 and odd.remember_token and odd.train_max_epochs == 7
    problems = OrthoFMParameters(server_url="localhost:8000", class_label_tag="../x").validate()
    assert any("should look like http" in m for m in problems) and any("Label tag" in m for m in problems)
    assert OrthoFMParameters().validate() == []


def test_colour_table_and_segment_colours():
    table = heatmap_table(256)
    assert len(table) == 256 and table[0][3] == 0.0 and table[-1][3] == 1.0
    brightness = [r + g + b for r, g, b, _ in table]
    assert all(b2 >= b1 - 1e-9 for b1, b2 in zip(brightness, brightness[1:]))  # noqa: RUF007
    assert segment_color("Femur") == segment_color("femur") != segment_color("tibia")
    assert segment_color("unknown thing") == segment_color("unknown thing")
    assert all(0 <= c <= 1 for c in segment_color("x", 13))


def test_background_job_states():
    done = BackgroundJob("ok", lambda cancel, progress: (progress(5, 10), 42)[1]).start().wait(5)
    assert done.state == "done" and done.result == 42 and done.fraction == 1.0

    def fail(cancel, progress):
        raise ValueError("bad input")

    failed = BackgroundJob("fail", fail).start().wait(5)
    assert failed.state == "failed" and "bad input" in failed.message

    def wait_for_cancel(cancel, progress):
        while not cancel.wait(0.01):
            pass
        raise OrthoFMCancelled("Cancelled while testing.")

    job = BackgroundJob("long", wait_for_cancel).start()
    time.sleep(0.05)
    assert job.snapshot().state == "running"
    job.cancel()
    assert job.wait(5).state == "cancelled"
    assert threading.active_count() < 50


def test_gzip_write_is_deterministic():
    geom = Geometry()
    a = np.ones((1, 2, 2), np.uint8)
    assert write_nrrd(a, geom) == write_nrrd(a, geom)
    assert gzip.decompress(write_nrrd(a, geom).split(b"\n\n", 1)[1]) == a.tobytes()


def test_series_zip_is_extracted_flat_and_traversal_is_refused(tmp_path):
    import zipfile

    from OrthoFMLib.errors import OrthoFMError
    from OrthoFMLib.workflow import extract_series

    good = tmp_path / "s.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("IM1.dcm", b"a")
        zf.writestr("sub/IM2.dcm", b"b")
    folder = extract_series(good, tmp_path / "series")
    assert sorted(p.name for p in folder.iterdir()) == ["IM1.dcm", "IM2.dcm"] and not good.exists()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.dcm", b"x")
    with pytest.raises(OrthoFMError, match="unsafe entry"):
        extract_series(bad, tmp_path / "bad")
    assert not (tmp_path / "escape.dcm").exists()


def test_plain_label_map_takes_segments_from_the_reply():
    geom = Geometry()
    data = write_nrrd(np.array([[[0, 1, 2]]], np.uint8), geom)
    reply = {"segments": [{"name": "bone", "value": 1, "color": [0.9, 0.9, 0.8]},
                          {"name": "soft", "value": 2, "color": [0.8, 0.4, 0.4]}]}
    seg = parse_segmentation(data, reply)
    assert [(s.name, s.value, s.color) for s in seg.segments] == [("bone", 1, (0.9, 0.9, 0.8)),
                                                                  ("soft", 2, (0.8, 0.4, 0.4))]
