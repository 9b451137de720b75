"""Readers on real files: pydicom-data radiographs/MR/CT and the shared knee MRI, hip, wrist and knee images."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from orthofm.io import ImageRecord, SpacingUnknownWarning, read_image


def _read(path, **kwargs) -> ImageRecord:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpacingUnknownWarning)
        return read_image(path, **kwargs)


def _rg3(name: str = "RG3_UNCR.dcm", **kwargs) -> ImageRecord:
    return _read(get_testdata_file(name), **kwargs)


# --- radiographs: display semantics ------------------------------------------------------------


def test_rg3_uncompressed_and_j2k_lossless_identical() -> None:
    unc, j2kr = _rg3("RG3_UNCR.dcm"), _rg3("RG3_J2KR.dcm")
    assert unc.array.shape == (1760, 1760) and unc.array.dtype == np.float32
    np.testing.assert_array_equal(unc.array, j2kr.array)


def test_rg3_j2k_lossy_close() -> None:
    unc, j2ki = _rg3("RG3_UNCR.dcm"), _rg3("RG3_J2KI.dcm")
    assert np.corrcoef(unc.array.ravel(), j2ki.array.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"])
def test_rg3_monochrome1_inverted_bone_bright(name: str) -> None:
    rec = _rg3(name)
    assert rec.photometric == "MONOCHROME1" and rec.metadata["inverted"] is True
    rows = rec.array[550:650].mean(axis=0)  # a band across the lower leg (tibia at columns ~800-960)
    air, soft_tissue, tibia = rows[520:600].mean(), rows[690:750].mean(), rows[820:960].mean()
    assert tibia > soft_tissue + 0.15 > air + 0.2, (air, soft_tissue, tibia)
    stored = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm")).pixel_array.astype(float)
    assert np.corrcoef(stored.ravel()[::97], rec.array.ravel()[::97])[0, 1] < -0.9  # inverted, not just shifted


def test_rg3_window_applied_and_skippable() -> None:
    stored = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm")).pixel_array.astype(np.float32)
    windowed = _rg3()
    assert windowed.metadata["voi"].startswith("window C=550 W=1024")
    # PS3.3 C.11.2.1.2 LINEAR window to [0, 1], then MONOCHROME1 inversion
    expected = 1.0 - np.clip((stored - 549.5) / 1023.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(windowed.array, expected, atol=1e-6)
    raw = _rg3(apply_voi_lut=False)
    assert raw.metadata["voi"] is None
    np.testing.assert_array_equal(raw.array, 1023.0 - stored)  # 10 bits stored: inverted within 0..1023


def test_bits_stored_masks_junk_high_bits(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    arr = ds.pixel_array.copy()
    arr[::2] |= np.uint16(0xA000)  # overlay/junk bits above BitsStored=10
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "junk.dcm")
    np.testing.assert_array_equal(_read(tmp_path / "junk.dcm").array, _rg3().array)


def test_voi_lut_sequence_applied(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    lut = np.sqrt(np.arange(1024) / 1023.0) * 4095.0  # a gamma-like vendor curve, 12-bit output
    item = pydicom.Dataset()
    item.LUTDescriptor = [1024, 0, 12]
    item.add_new(0x00283006, "US", [int(v) for v in np.rint(lut)])  # LUT Data
    ds.VOILUTSequence = pydicom.Sequence([item])
    ds.save_as(tmp_path / "voilut.dcm")
    rec = _read(tmp_path / "voilut.dcm")
    assert rec.metadata["voi"] == "VOILUTSequence"
    stored = ds.pixel_array
    expected = 1.0 - np.round(lut)[stored] / 4095.0
    np.testing.assert_allclose(rec.array, expected, atol=1e-5)


def test_modality_rescale_applied_ct() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rec = read_image(get_testdata_file("CT_small.dcm"))
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(rec.array, expected)
    assert rec.metadata["voi"] is None  # cross-sectional: modality units (HU) kept, window only recorded
    assert rec.spacing == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))


def test_modality_lut_sequence_applied() -> None:
    ds = pydicom.dcmread(get_testdata_file("mlut_18.dcm"))
    rec = _read(get_testdata_file("mlut_18.dcm"))
    assert rec.metadata["modality_lut"] == "ModalityLUTSequence"
    lut = np.asarray(ds.ModalityLUTSequence[0].LUTData)
    first = int(ds.ModalityLUTSequence[0].LUTDescriptor[1])
    stored = ds.pixel_array.astype(np.int64)
    stored = np.where(stored >= 2048, stored - 4096, stored)  # 12 bits stored, signed: sign-extend bit 11
    idx = np.clip(stored - first, 0, len(lut) - 1)
    np.testing.assert_array_equal(rec.array, lut[idx].astype(np.float32))


def _with_tags(tmp_path: Path, sop: str, **tags) -> Path:
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ds.SOPClassUID = sop
    ds.file_meta.MediaStorageSOPClassUID = sop
    for key, value in tags.items():
        setattr(ds, key, value)
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}.dcm"
    ds.save_as(path)
    return path


DX = "1.2.840.10008.5.1.4.1.1.1.1"


def test_pixel_spacing_preferred_over_imager_spacing(tmp_path: Path) -> None:
    rec = read_image(_with_tags(tmp_path, DX, PixelSpacing=[0.09, 0.08], ImagerPixelSpacing=[0.1, 0.1]))
    assert rec.spacing == pytest.approx((0.09, 0.08)) and rec.metadata["spacing_source"] == "PixelSpacing"


def test_imager_spacing_used_and_magnification_corrected(tmp_path: Path) -> None:
    rec = read_image(_with_tags(tmp_path, DX, ImagerPixelSpacing=[0.15, 0.14]))
    assert rec.spacing == pytest.approx((0.15, 0.14))
    assert rec.metadata["spacing_source"].startswith("ImagerPixelSpacing (detector plane)")
    rec = read_image(_with_tags(tmp_path, DX, ImagerPixelSpacing=[0.12, 0.12],
                                EstimatedRadiographicMagnificationFactor=1.2))
    assert rec.spacing == pytest.approx((0.1, 0.1))


def test_rg3_spacing_unknown_warns() -> None:
    with pytest.warns(SpacingUnknownWarning, match="spacing is unknown"):
        rec = read_image(get_testdata_file("RG3_UNCR.dcm"))
    assert rec.spacing is None and rec.metadata["spacing_source"] is None
    assert rec.body_part == "EXTREMITY" and rec.view == "AP" and rec.modality == "CR"


def test_folder_with_one_radiograph_reads_that_radiograph(tmp_path: Path) -> None:
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "IM0001").symlink_to(get_testdata_file("RG3_J2KR.dcm"))
    (tmp_path / "study" / "notes.txt").write_text("not DICOM: skipped")
    folder, single = _read(tmp_path / "study"), _rg3("RG3_J2KR.dcm")
    assert folder.array.shape == (1760, 1760) and not folder.is_volume
    np.testing.assert_array_equal(folder.array, single.array)
    assert folder.metadata["inverted"] is True and folder.modality == "CR"
    assert folder.source == str(tmp_path / "study" / "IM0001")


# --- compressed transfer syntaxes, colour, multi-frame -------------------------------------------


def test_rle_and_j2k_multiframe_identical_to_uncompressed() -> None:
    ref = _read(get_testdata_file("emri_small.dcm"))
    assert ref.array.shape == (10, 64, 64) and ref.metadata["frame_axis"] == "frame"
    for name in ("emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_big_endian.dcm"):
        np.testing.assert_array_equal(_read(get_testdata_file(name)).array, ref.array)
    frame = ref.frame(3)
    assert frame.array.shape == (64, 64)
    np.testing.assert_array_equal(frame.array, ref.array[3])


@pytest.mark.parametrize(
    "compressed, reference",
    [
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),  # JPEG Lossless SV1, RGB
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless, signed 16-bit
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),  # JPEG-LS lossless, 10 frames, 12-bit
    ],
)
def test_jpeg_lossless_and_jpeg_ls_identical_to_uncompressed_twin(compressed: str, reference: str) -> None:
    rec = _read(get_testdata_file(compressed))
    assert rec.metadata["decoder"] == "gdcm"
    np.testing.assert_array_equal(rec.array, _read(get_testdata_file(reference)).array)


def test_jpeg_lossless_and_12bit_match_pydicom_reference_pixels() -> None:
    """Files without an uncompressed twin: pixel values pydicom's own test suite publishes for them
    (decoded there by pylibjpeg-libjpeg, an independent decoder)."""
    p14 = _read(get_testdata_file("JPGLosslessP14SV1_1s_1f_8b.dcm")).array
    assert tuple(p14[300, 512:520]) == (26, 26, 25, 22, 19, 16, 14, 15)
    assert tuple(p14[600, 512:520]) == (45, 43, 41, 38, 33, 30, 26, 21)
    ll = _read(get_testdata_file("JPEG-LL.dcm")).array  # 16-bit signed lossless
    assert tuple(ll[400, 124:132]) == (60, 58, 61, 68, 59, 65, 64, 67)
    assert tuple(ll[600, 124:132]) == (3, 1, 2, 0, 2, 1, 2, 0)
    ext = _read(get_testdata_file("JPGExtended.dcm"))  # JPEG Extended, 12-bit lossy
    assert ext.metadata["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.51"
    assert (ext.array[420, 140], ext.array[230, 120]) == (244, 95)


@pytest.mark.parametrize("syntax", ["JPEGLosslessProcess14_1", "JPEGLosslessProcess14", "JPEGLSLossless"])
def test_rg3_cr_as_jpeg_lossless_and_jpeg_ls_identical(syntax: str, tmp_path: Path) -> None:
    """The 1760 px MONOCHROME1 CR re-encoded losslessly (by GDCM) reads bit-identical to RG3_UNCR."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(get_testdata_file("RG3_UNCR.dcm"))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(tmp_path / "rg3.dcm"))
    assert writer.Write()
    rec = _read(tmp_path / "rg3.dcm")
    assert rec.metadata["TransferSyntaxUID"].startswith("1.2.840.10008.1.2.4.")
    assert rec.metadata["inverted"] is True
    np.testing.assert_array_equal(rec.array, _rg3().array)


def test_jpeg_baseline_ybr_converted_to_rgb_luminance() -> None:
    ref = _read(get_testdata_file("SC_rgb.dcm")).array
    jpeg = _read(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")).array  # YBR_FULL JPEG baseline
    rle = _read(get_testdata_file("SC_rgb_rle.dcm")).array
    np.testing.assert_array_equal(rle, ref)
    assert np.abs(jpeg - ref).max() < 4.0  # lossy, but colour-converted (unconverted YCbCr differs by >100)


def test_palette_colour_to_grey() -> None:
    rec = _read(get_testdata_file("OBXXXX1A.dcm"))
    assert rec.array.shape == (600, 800) and rec.photometric == "PALETTE COLOR"
    assert rec.array.std() > 0


def test_enhanced_multiframe_geometry_from_functional_groups() -> None:
    rec = _read(get_testdata_file("eCT_Supplemental.dcm"))
    assert rec.metadata["frame_axis"] == "slice"
    assert rec.array.shape == (2, 512, 512) and len(rec.spacing) == 3
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
                 for f in ds.PerFrameFunctionalGroupsSequence]
    step = np.asarray(positions[1]) - np.asarray(positions[0])
    assert rec.spacing[0] == pytest.approx(np.linalg.norm(step))


# --- MRI series ----------------------------------------------------------------------------------


def test_knee_mri_shuffled_series_geometry(shared_data: Path) -> None:
    files = sorted((shared_data / "knee_mri_dess").glob("*.dcm"))
    random.Random(0).shuffle(files)
    rec = read_image(files)
    assert rec.array.shape == (24, 512, 512) and rec.is_volume and rec.modality == "MR"
    assert rec.spacing == pytest.approx((1.5, 0.3125, 0.3125))
    # independent reference from the headers: sagittal slab, rows along -S, columns along +P
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    first = min(headers, key=lambda h: float(np.dot(np.asarray(h.ImagePositionPatient, dtype=float), normal)))
    assert rec.origin == pytest.approx(tuple(float(v) for v in first.ImagePositionPatient))
    np.testing.assert_allclose(rec.direction[:, 0], normal, atol=1e-6)
    np.testing.assert_allclose(rec.direction[:, 1], iop[3:], atol=1e-6)
    np.testing.assert_allclose(rec.direction[:, 2], iop[:3], atol=1e-6)
    # slice order along the normal, not file order: each slice equals its own file's pixels
    by_path = {str(f): pydicom.dcmread(f).pixel_array for f in files}
    for k, src in enumerate(rec.source):
        np.testing.assert_array_equal(rec.array[k], by_path[src].astype(np.float32))
    # the folder reads the same
    np.testing.assert_array_equal(read_image(shared_data / "knee_mri_dess").array, rec.array)


def test_knee_mri_matches_itk_series_reader(shared_data: Path) -> None:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(shared_data / "knee_mri_dess")))
    ref = reader.Execute()
    rec = read_image(shared_data / "knee_mri_dess")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref).astype(np.float32), rec.array)
    assert rec.spacing == pytest.approx(ref.GetSpacing()[::-1])
    assert rec.origin == pytest.approx(ref.GetOrigin())
    np.testing.assert_allclose(rec.direction[:, ::-1], np.asarray(ref.GetDirection()).reshape(3, 3), atol=1e-6)


# --- shared radiographs and raster formats -------------------------------------------------------


def test_hip_j2k_rgb_dx_read(shared_data: Path) -> None:
    paths = sorted((shared_data / "hip_xray").glob("*.dcm"))
    assert len(paths) == 10
    for path in paths:
        rec = _read(path)
        assert rec.array.shape == (331, 331) and rec.photometric == "RGB" and rec.modality == "DX"
        assert rec.metadata["TransferSyntaxUID"].startswith("1.2.840.10008.1.2.4.9")
        rgb = pydicom.dcmread(path).pixel_array.astype(np.float32)
        assert rgb.shape == (331, 331, 3)
        np.testing.assert_allclose(rec.array, rgb @ np.float32([0.299, 0.587, 0.114]), atol=1e-3)
        assert rec.array.std() > 10


def test_knee_and_wrist_pngs_read(shared_data: Path) -> None:
    wrist_path = next((shared_data / "wrist_xray").glob("*.png"))
    wrist = _read(wrist_path)
    assert wrist.array.shape == (727, 494) and wrist.spacing is None
    np.testing.assert_array_equal(wrist.array, np.asarray(Image.open(wrist_path), dtype=np.float32))
    for path in sorted((shared_data / "knee_kl" / "train" / "2").glob("*.png"))[:5]:
        rec = _read(path)
        assert rec.array.shape == (224, 224) and rec.metadata["format"] == "PNG"


def test_raster_variants_from_a_real_radiograph(tmp_path: Path) -> None:
    """16-bit grey PNG/TIFF keep full precision; RGB, palette, JPEG and 16-bit RGB decode to grey."""
    import SimpleITK as sitk

    stored = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm")).pixel_array[::4, ::4]  # 10-bit, 440x440
    grey16 = (stored.astype(np.uint16) * 64)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    Image.fromarray(grey16).save(tmp_path / "g16.tif")
    np.testing.assert_array_equal(_read(tmp_path / "g16.png").array, grey16.astype(np.float32))
    np.testing.assert_array_equal(_read(tmp_path / "g16.tif").array, grey16.astype(np.float32))
    grey8 = (stored >> 2).astype(np.uint8)
    Image.fromarray(np.stack([grey8] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(_read(tmp_path / "rgb.png").array, grey8.astype(np.float32))
    Image.fromarray(grey8).convert("P").save(tmp_path / "pal.png")
    assert _read(tmp_path / "pal.png").photometric == "PALETTE COLOR"
    np.testing.assert_allclose(_read(tmp_path / "pal.png").array, grey8, atol=8)
    Image.fromarray(grey8).save(tmp_path / "g.jpg", quality=95)
    assert np.corrcoef(_read(tmp_path / "g.jpg").array.ravel(), grey8.ravel())[0, 1] > 0.99
    rgb16 = np.stack([grey16] * 3, -1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb16, isVector=True), str(tmp_path / "rgb16.png"))
    rec = _read(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(rec.array, grey16.astype(np.float32))  # PIL would cut this to 8 bits


def test_nifti_and_nrrd_read_with_lps_geometry(tmp_path: Path) -> None:
    import nibabel as nib
    import nrrd

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (i, j, k) file order
    ras = np.array([[-0.5, 0, 0, 10.0], [0, 0.7, 0, -20.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "v.nii.gz")
    rec = read_image(tmp_path / "v.nii.gz")
    assert rec.array.shape == (6, 5, 4)
    np.testing.assert_array_equal(rec.array, data.transpose(2, 1, 0))
    assert rec.spacing == pytest.approx((2.0, 0.7, 0.5))
    assert rec.origin == pytest.approx((-10.0, 20.0, 30.0))  # RAS -> LPS
    np.testing.assert_allclose(rec.direction[:, 2], [1, 0, 0])  # i along -R = +L
    np.testing.assert_allclose(rec.direction[:, 1], [0, -1, 0])  # j along +A = -P
    header = {"space": "right-anterior-superior", "space directions": ras[:3, :3].T, "space origin": ras[:3, 3],
              "kinds": ["domain"] * 3}
    nrrd.write(str(tmp_path / "v.nrrd"), data, header)
    rec2 = read_image(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(rec2.array, rec.array)
    assert rec2.spacing == pytest.approx(rec.spacing) and rec2.origin == pytest.approx(rec.origin)
    np.testing.assert_allclose(rec2.direction, rec.direction)
