"""Writers: results land on the source geometry as ITK (hence 3D Slicer and MONAI) loads the source."""

from __future__ import annotations

import warnings
from pathlib import Path

import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from orthofm.io import (
    ImageRecord,
    SpacingUnknownWarning,
    read_image,
    write_like,
    write_seg_nrrd,
    write_volume,
)

pytestmark = pytest.mark.filterwarnings("ignore::orthofm.io.SpacingUnknownWarning")


def _itk_geometry(path: Path | str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    spacing, origin = np.asarray(reader.GetSpacing()), np.asarray(reader.GetOrigin())
    direction = np.asarray(reader.GetDirection()).reshape(len(spacing), len(spacing))
    return spacing, origin, direction


def _assert_same_grid(written: Path, source: Path | str) -> None:
    """The written result and the source, both loaded by ITK, occupy the same physical pixels."""
    ws, wo, wd = _itk_geometry(written)
    ss, so, sd = _itk_geometry(source)
    n = len(ss)
    np.testing.assert_allclose(ws[:2], ss[:2], rtol=1e-6)
    np.testing.assert_allclose(wo[:n], so, atol=1e-4)
    np.testing.assert_allclose(wd[:n, :n], sd, atol=1e-6)


@pytest.fixture(scope="module")
def knee(shared_data: Path) -> ImageRecord:
    return read_image(shared_data / "knee_mri_dess")


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_mri_write_and_reread_geometry(knee: ImageRecord, tmp_path: Path, suffix: str) -> None:
    out = write_like(knee.array, knee, tmp_path / f"knee{suffix}")
    back = read_image(out)
    np.testing.assert_array_equal(back.array, knee.array)
    assert back.spacing == pytest.approx(knee.spacing)
    assert back.origin == pytest.approx(knee.origin, abs=1e-4)
    np.testing.assert_allclose(back.direction, knee.direction, atol=1e-6)


def test_mri_nrrd_header_matches_dicom_series_as_itk_reads_it(knee: ImageRecord, shared_data: Path,
                                                              tmp_path: Path) -> None:
    out = write_like((knee.array > 1000).astype(np.uint8), knee, tmp_path / "mask.nrrd")
    header = nrrd.read_header(str(out))
    assert header["space"] == "left-posterior-superior" and header["encoding"] == "gzip"
    assert header["type"] in ("unsigned char", "uint8")
    assert list(header["sizes"]) == [512, 512, 24]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(shared_data / "knee_mri_dess")))
    ref = reader.Execute()
    itk_dir = np.asarray(ref.GetDirection()).reshape(3, 3)
    expected_rows = (itk_dir * np.asarray(ref.GetSpacing())[None, :]).T  # one row per file axis (i, j, k)
    np.testing.assert_allclose(header["space directions"], expected_rows, atol=1e-6)
    np.testing.assert_allclose(header["space origin"], ref.GetOrigin(), atol=1e-6)


def test_cr_result_overlays_cr_as_itk_loads_it(tmp_path: Path) -> None:
    src = get_testdata_file("RG3_UNCR.dcm")
    rec = read_image(src)
    heat = np.random.default_rng(0).random(rec.shape, dtype=np.float32)
    out = write_like(heat, rec, tmp_path / "heat.nrrd")
    _assert_same_grid(out, src)
    back = read_image(out)
    assert back.array.shape == (1, 1760, 1760)  # 2D results are single-slice volumes
    np.testing.assert_array_equal(back.array[0], heat)


@pytest.mark.parametrize(
    ("sop", "tags"),
    [
        ("1.2.840.10008.5.1.4.1.1.1.1", {"ImagerPixelSpacing": [0.15, 0.14], "PixelSpacing": [0.12, 0.11]}),
        ("1.2.840.10008.5.1.4.1.1.1", {"PixelSpacing": [0.12, 0.11]}),
        ("1.2.840.10008.5.1.4.1.1.7", {"PixelSpacing": [0.12, 0.11]}),
        ("1.2.840.10008.5.1.4.1.1.12.2", {"ImagerPixelSpacing": [0.3, 0.3]}),
    ],
)
def test_radiograph_spacing_variants_overlay(tmp_path: Path, sop: str, tags: dict) -> None:
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ds.SOPClassUID = sop
    ds.file_meta.MediaStorageSOPClassUID = sop
    for key, value in tags.items():
        setattr(ds, key, value)
    src = tmp_path / "src.dcm"
    ds.save_as(src)
    rec = read_image(src)
    out = write_like(np.zeros(rec.shape, dtype=np.uint8), rec, tmp_path / "lab.nrrd")
    _assert_same_grid(out, src)


def test_png_hip_and_positioned_slice_results_overlay(shared_data: Path, tmp_path: Path) -> None:
    sources = [next((shared_data / "wrist_xray").glob("*.png")), min((shared_data / "hip_xray").glob("*.dcm")),
               Path(get_testdata_file("MR_small.dcm")), Path(get_testdata_file("CT_small.dcm"))]  # with IPP/IOP
    for src in sources:
        rec = read_image(src)
        out = write_like(np.ones(rec.shape, dtype=np.uint8), rec, tmp_path / f"{src.stem}.nii.gz")
        _assert_same_grid(out, src)


def test_seg_nrrd_names_colours_and_geometry(knee: ImageRecord, tmp_path: Path) -> None:
    import slicerio

    labels = np.zeros(knee.shape, dtype=np.uint8)
    labels[8:16, 100:300, 200:400] = 1
    labels[10:12, 320:380, 100:150] = 2
    segments = [{"name": "femur", "color": (230, 220, 70), "value": 1},
                {"name": "effusion", "color": (0.2, 0.4, 1.0), "value": 2}]
    out = write_seg_nrrd(labels, knee, tmp_path / "knee.seg.nrrd", segments)
    seg = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in seg["segments"]] == ["femur", "effusion"]
    np.testing.assert_allclose(seg["segments"][0]["color"], [230 / 255, 220 / 255, 70 / 255], atol=1e-5)
    assert [s["labelValue"] for s in seg["segments"]] == [1, 2]
    np.testing.assert_array_equal(seg["voxels"].transpose(2, 1, 0), labels)  # (i, j, k) -> (k, j, i)
    ijk = seg["ijkToLPS"]
    np.testing.assert_allclose(ijk[:3, 3], knee.origin, atol=1e-6)
    np.testing.assert_allclose(ijk[:3, 2], knee.direction[:, 0] * 1.5, atol=1e-6)
    with pytest.raises(ValueError, match=r"labelmap values \[2\] have no segment"):
        write_seg_nrrd(labels, knee, tmp_path / "bad.seg.nrrd", segments[:1])


def test_seg_nrrd_for_2d_radiograph(tmp_path: Path) -> None:
    import slicerio

    rec = read_image(get_testdata_file("RG3_UNCR.dcm"))
    labels = (rec.array > 0.6).astype(np.uint8)
    out = write_seg_nrrd(labels, rec, tmp_path / "bone.seg.nrrd", [{"name": "bone", "color": (1, 1, 0.8), "value": 1}])
    seg = slicerio.read_segmentation(str(out))
    assert seg["voxels"].shape == (1760, 1760, 1)
    np.testing.assert_array_equal(seg["voxels"][:, :, 0].T, labels)


def test_float_heatmap_written_raw_and_read_by_itk_like_slicer(knee: ImageRecord, tmp_path: Path) -> None:
    """Float maps default to raw NRRD (gzip barely shrinks float32 and took seconds); labels stay gzip."""
    heat = (knee.array / knee.array.max()).astype(np.float32)
    out = write_like(heat, knee, tmp_path / "heat.nrrd")
    header = nrrd.read_header(str(out))
    assert header["encoding"] == "raw" and header["type"] == "float"
    assert out.stat().st_size >= heat.nbytes
    img = sitk.ReadImage(str(out))  # ITK's NRRD reader, as 3D Slicer loads it
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), heat)
    np.testing.assert_allclose(img.GetOrigin(), knee.origin, atol=1e-4)
    forced = write_volume(heat[:2], tmp_path / "heat_gz.nrrd", spacing=knee.spacing, compression_level=1)
    assert nrrd.read_header(str(forced))["encoding"] == "gzip"
    np.testing.assert_array_equal(read_image(forced).array, heat[:2])
    mask = write_like(heat > 0.5, knee, tmp_path / "mask.nrrd")
    assert nrrd.read_header(str(mask))["encoding"] == "gzip"
    with pytest.raises(ValueError, match="compression_level must be 0-9"):
        write_like(heat, knee, tmp_path / "bad.nrrd", compression_level=11)


def test_write_volume_explicit_geometry_and_atomic_replace(tmp_path: Path) -> None:
    vol = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    direction = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # (D,H,W) axes along +S, +P, -L
    path = tmp_path / "v.nrrd"
    path.write_text("old content")
    write_volume(vol, path, spacing=(2.0, 0.5, 0.25), origin=(1.0, 2.0, 3.0), direction=direction)
    rec = read_image(path)
    np.testing.assert_array_equal(rec.array, vol)
    assert rec.spacing == pytest.approx((2.0, 0.5, 0.25)) and rec.origin == pytest.approx((1.0, 2.0, 3.0))
    np.testing.assert_allclose(rec.direction, direction)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nrrd"]  # no temp files left behind
    with pytest.raises(ValueError, match="does not match the record"):
        write_like(np.zeros((5, 5)), rec, tmp_path / "x.nrrd")


def test_monai_loader_matches_itk_reader_affine(knee: ImageRecord, shared_data: Path) -> None:
    from monai.transforms import LoadImage

    from orthofm.io.monai_transforms import LoadOrthoImaged

    for src in [str(shared_data / "knee_mri_dess"), get_testdata_file("RG3_UNCR.dcm")]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LoadImage(reader="ITKReader", image_only=True)(src)
            ours = LoadOrthoImaged(keys="image")({"image": src})["image"]
        assert tuple(ours.shape) == tuple(ref.shape)  # (W, H, D); a radiograph is (W, H, 1)
        np.testing.assert_allclose(ours.affine.numpy(), ref.affine.numpy(), atol=1e-5)
    ours = LoadOrthoImaged(keys="image")({"image": str(shared_data / "knee_mri_dess")})["image"]
    np.testing.assert_array_equal(ours.numpy(), knee.array.transpose(2, 1, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpacingUnknownWarning)
        cr = LoadOrthoImaged(keys="image")({"image": get_testdata_file("RG3_UNCR.dcm")})["image"]
    assert cr.meta["orthofm"]["inverted"] is True and cr.meta["orthofm"]["spacing_known"] is False
