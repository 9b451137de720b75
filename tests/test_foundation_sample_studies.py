"""The demo studies `make run` serves: what ships in git, its attribution, and the pydicom-data copies."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from orthofm.utils.sample_studies import PYDICOM_SAMPLES, install_pydicom_samples

STUDIES = Path(__file__).resolve().parents[1] / "monailabel_app" / "sample_studies"
IMAGE_SUFFIXES = {".png", ".dcm", ".jpg", ".nii", ".gz", ".nrrd"}
ROW = re.compile(r"^\| (?P<file>[\w.]+) \| (?P<source>[^|]+) \| (?P<label>[^|]+) \| (?P<licence>[^|]+) \|$")


def _attribution() -> dict[str, dict[str, str]]:
    rows = {}
    for line in (STUDIES / "ATTRIBUTION.md").read_text().splitlines():
        match = ROW.match(line.strip())
        if match and match["file"] != "file":
            rows[match["file"]] = {k: v.strip() for k, v in match.groupdict().items()}
    return rows


def _committed_images() -> list[Path]:
    return sorted(p for p in STUDIES.iterdir() if p.suffix in IMAGE_SUFFIXES and p.name not in PYDICOM_SAMPLES)


def test_every_image_is_attributed_and_every_attributed_file_ships() -> None:
    rows = _attribution()
    shipped = {p.name for p in _committed_images()}
    assert shipped == {name for name in rows if name not in PYDICOM_SAMPLES}
    assert set(PYDICOM_SAMPLES) <= set(rows)
    assert all(rows[n]["licence"] == "CC BY 4.0" for n in shipped)
    assert sum(p.stat().st_size for p in _committed_images()) < 1_000_000  # a small demo set


def test_knee_radiographs_span_all_kl_grades_and_decode() -> None:
    rows = _attribution()
    knees = [p for p in _committed_images() if p.name.startswith("knee_")]
    assert len(knees) >= 5
    grades = set()
    for path in knees:
        grade = int(re.match(r"knee_kl(\d)_", path.name)[1])
        assert rows[path.name]["label"] == f"KL {grade}"
        assert rows[path.name]["source"].startswith(f"knee_kl val/{grade}/")
        grades.add(grade)
        with Image.open(path) as im:
            pixels = np.asarray(im)
        assert pixels.shape == (224, 224) and pixels.dtype == np.uint8 and pixels.std() > 10
    assert grades == {0, 1, 2, 3, 4}


def test_hip_dicoms_decode_from_jpeg2000() -> None:
    hips = [p for p in _committed_images() if p.name.startswith("hip_")]
    assert len(hips) >= 2
    for path in hips:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"  # JPEG 2000
        pixels = ds.pixel_array  # needs pylibjpeg-openjpeg: fails if the codec is missing
        assert pixels.shape == (331, 331, 3) and pixels.std() > 10


def test_shipped_files_are_unchanged_copies_of_their_sources(shared_data: Path) -> None:
    for name, row in _attribution().items():
        if name in PYDICOM_SAMPLES:
            continue
        dataset, rel = row["source"].split(" ", 1)
        source = shared_data / dataset / rel
        assert (STUDIES / name).read_bytes() == source.read_bytes(), f"{name} differs from {source}"


def test_pydicom_samples_are_copied_offline_and_idempotently(tmp_path: Path) -> None:
    written = install_pydicom_samples(tmp_path)
    assert sorted(p.name for p in written) == sorted(PYDICOM_SAMPLES)
    cr = pydicom.dcmread(tmp_path / "RG3_UNCR.dcm")
    assert cr.PhotometricInterpretation == "MONOCHROME1" and cr.pixel_array.shape == (1760, 1760)
    mr = pydicom.dcmread(tmp_path / "MR2_UNCR.dcm")
    assert mr.Modality == "MR" and mr.pixel_array.shape == (1024, 1024)
    stamps = {p.name: p.stat().st_mtime_ns for p in written}
    install_pydicom_samples(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in written} == stamps  # unchanged files are not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PYDICOM_SAMPLES)  # no temp files left


def test_pydicom_sample_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="does not exist"):
        install_pydicom_samples(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="NOPE.dcm not found in the installed pydicom-data"):
        install_pydicom_samples(tmp_path, names=["NOPE.dcm"])


def test_setup_time_copies_and_demo_server_state_are_git_ignored() -> None:
    repo = STUDIES.parents[1]
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [STUDIES / n for n in (*PYDICOM_SAMPLES, "datastore_v2.json", "labels/final/x.nrrd")]
    out = subprocess.run(["git", "-C", str(repo), "check-ignore", *map(str, paths)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert sorted(Path(p).name for p in out.stdout.split()) == sorted(Path(p).name for p in map(str, paths))
