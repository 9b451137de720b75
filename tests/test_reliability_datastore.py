"""The crash-consistent datastore in-process: atomic writes, last-good-copy recovery, no empty labels, series folders."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[1] / "monailabel_app"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from lib.server.datastore import OrthoDatastore

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000"
                    "3a7e9b550000000a49444154789c6360000000020001e221bc330000000049454e44ae426082")


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    root = tmp_path / "studies"
    root.mkdir()
    for name in ("a.png", "b.png"):
        (root / name).write_bytes(PNG)
    series = root / "mri1"
    series.mkdir()
    for i in (1, 2):
        (series / f"{i:04d}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    single = root / "cr_folder"  # a folder with one DICOM (a radiograph) is read as that file
    single.mkdir()
    (single / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (root / ".hidden.png").write_bytes(PNG)
    (root / ".a.tmp-1234.png").write_bytes(PNG)
    return root


def make(root: Path) -> OrthoDatastore:
    return OrthoDatastore(str(root), auto_reload=False)


def test_images_series_and_hidden_files(studies: Path) -> None:
    ds = make(studies)
    assert sorted(ds.list_images()) == ["a", "b", "cr_folder", "mri1"]
    assert ds.is_series("mri1") and not ds.is_series("a")
    assert ds.get_image_uri("cr_folder").endswith("cr_folder/x.dcm")
    assert Path(ds.get_image_uri("mri1")).is_dir()
    assert ds._to_id("x.seg.nrrd") == ("x", ".seg.nrrd")
    assert ds._to_id("x.nii.gz") == ("x", ".nii.gz")
    assert ds._to_id("a.png.png") == ("a.png", ".png")


def test_label_saved_atomically_and_old_extension_removed(studies: Path, tmp_path: Path) -> None:
    ds = make(studies)
    lab = tmp_path / "l.json"
    lab.write_text('{"label": "KL2"}')
    ds.save_label("a", str(lab), "cls", {"client_id": "t"})
    assert (studies / "labels" / "cls" / "a.json").read_text() == '{"label": "KL2"}'
    assert ds.get_label_info("a", "cls")["client_id"] == "t"
    nrrd = tmp_path / "l.nrrd"
    nrrd.write_bytes(b"NRRD0004\n")
    ds.save_label("a", str(nrrd), "cls", {})
    assert not (studies / "labels" / "cls" / "a.json").exists()  # no orphan of the old extension
    assert ds.get_label_uri("a", "cls").endswith("a.nrrd")
    assert not [p for p in (studies / "labels" / "cls").iterdir() if p.name.startswith(".")]  # no temp left


def test_empty_label_is_refused_and_never_registered(studies: Path, tmp_path: Path) -> None:
    ds = make(studies)
    empty = tmp_path / "e.json"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        ds.save_label("a", str(empty), "final", {})
    # a zero-byte file left on disk (e.g. by MONAI Label's in-place copy before a kill) is ignored on start
    (studies / "labels" / "final").mkdir(parents=True, exist_ok=True)
    (studies / "labels" / "final" / "b.nrrd").write_bytes(b"")
    ds2 = make(studies)
    assert ds2.get_labels_by_image_id("b") == {}


def test_json_written_atomically_with_last_good_copy(studies: Path, tmp_path: Path) -> None:
    ds = make(studies)
    lab = tmp_path / "l.json"
    lab.write_text('{"label": 1}')
    ds.save_label("a", str(lab), "cls", {})
    ds.update_image_info("b", {"note": "x"})
    cfg = studies / "datastore_v2.json"
    bak = studies / "datastore_v2.json.bak"
    current, previous = json.loads(cfg.read_text()), json.loads(bak.read_text())
    assert current["objects"]["b"]["image"]["info"]["note"] == "x"
    assert "note" not in previous["objects"]["b"]["image"]["info"]  # one write behind
    assert "cls" in previous["objects"]["a"]["labels"]
    assert not [p for p in studies.iterdir() if ".tmp-" in p.name and p.name != ".a.tmp-1234.png"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_corrupt_json_recovers_from_last_good_copy(studies: Path, tmp_path: Path, damage: str) -> None:
    ds = make(studies)
    lab = tmp_path / "l.json"
    lab.write_text('{"label": "KL3"}')
    ds.save_label("a", str(lab), "cls", {"client_id": "annotator-1"})
    ds.update_image_info("a", {"reviewed": True})  # .bak now holds the label with its info
    cfg = studies / "datastore_v2.json"
    text = cfg.read_text()
    cfg.write_text({"empty": "", "truncated": text[: len(text) // 2], "garbage": "\x00\x01not json"}[damage])
    ds2 = make(studies)  # must not refuse to start
    assert ds2.recovered_from == "backup"
    assert ds2.get_label_info("a", "cls")["client_id"] == "annotator-1"
    assert json.loads(cfg.read_text())["objects"]["a"]["labels"]["cls"]  # a good JSON is back in place
    assert list(studies.glob("datastore_v2.json.corrupt-*"))  # the damaged file is kept for inspection


def test_corrupt_json_without_backup_rebuilds_from_disk(studies: Path, tmp_path: Path) -> None:
    ds = make(studies)
    lab = tmp_path / "l.json"
    lab.write_text('{"label": "KL1"}')
    ds.save_label("b", str(lab), "cls", {})
    (studies / "datastore_v2.json").write_text("")
    os.unlink(studies / "datastore_v2.json.bak")
    ds2 = make(studies)
    assert ds2.recovered_from == "disk"
    assert sorted(ds2.list_images()) == ["a", "b", "cr_folder", "mri1"]
    assert ds2.get_label_by_image_id("b", "cls") == "b"  # the label file on disk is registered again


def test_add_series_folder_and_duplicate_refused(studies: Path, tmp_path: Path) -> None:
    ds = make(studies)
    src = tmp_path / "series"
    shutil.copytree(studies / "mri1", src)
    assert ds.add_image("mri2", str(src), {}) == "mri2"
    assert (studies / "mri2" / "0001.dcm").is_file() and ds.is_series("mri2")
    with pytest.raises(FileExistsError):
        ds.add_image("mri2", str(src), {})
    assert not [p for p in studies.iterdir() if p.name.startswith(".mri2")]
