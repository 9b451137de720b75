"""Every bad-input kind raises ImageReadError (a ValueError) whose message names the problem."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from orthofm.io import ImageReadError, read_dicom_series, read_image
from orthofm.io.codecs import decoders_for

pytestmark = pytest.mark.filterwarnings("ignore::orthofm.io.SpacingUnknownWarning")


def _rg3_copy(tmp_path: Path, name: str = "RG3_UNCR.dcm", **changes) -> Path:
    ds = pydicom.dcmread(get_testdata_file(name))
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    path = tmp_path / f"bad_{len(list(tmp_path.iterdir()))}.dcm"
    ds.save_as(path)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims a size; the IDAT holds a few garbage bytes (decoding would fail)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00" * 8) + chunk(b"IEND", b""))
    return path


def _raises(match: str, path, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(path, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value


# --- not an image ---------------------------------------------------------------------------------


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("these are not pixels\n")
    _raises("not an image", tmp_path / "notes.png")
    (tmp_path / "report.dcm").write_text("not a dicom either\n")
    _raises("not an image", tmp_path / "report.dcm")
    (tmp_path / "data.bin").write_bytes(b"\x01\x02\x03" * 100)
    _raises("not an image", tmp_path / "data.bin")


def test_empty_file_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    _raises("not an image", tmp_path / "empty.png")
    _raises("no such file", tmp_path / "missing.dcm")


def test_empty_folder_has_no_dicom(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    _raises("no DICOM files", tmp_path)


# --- DICOM header problems ------------------------------------------------------------------------


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    _raises("DICOM without pixel data", _rg3_copy(tmp_path, PixelData=None))


def test_unsupported_transfer_syntax_names_missing_decoder(tmp_path: Path) -> None:
    path = tmp_path / "mpeg.dcm"
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    ds.is_implicit_VR, ds.is_little_endian = False, True
    ds.save_as(path)
    _raises("unsupported transfer syntax 1.2.840.10008.1.2.4.100 .MPEG2", path)


def test_jpeg_lossless_without_plugin_names_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real JPEG Lossless file on a machine without python-gdcm: the error says what to install."""
    from orthofm.io import codecs

    assert decoders_for("1.2.840.10008.1.2.4.70")[0] == ["python-gdcm"]  # pinned in requirements.txt
    monkeypatch.setattr(codecs.gdcm_handler, "is_available", lambda: False)
    err = _raises("unsupported transfer syntax 1.2.840.10008.1.2.4.70", get_testdata_file("JPEG-LL.dcm"))
    assert "python-gdcm" in str(err)


def test_htj2k_message_names_what_would_decode_it() -> None:
    # pydicom 2.4 refuses to write a file with this UID, so the message itself is checked
    from orthofm.io.codecs import unsupported_message

    assert decoders_for("1.2.840.10008.1.2.4.201") == ([], ["pydicom>=3 with pylibjpeg-openjpeg>=2.2 (HTJ2K)"])
    assert "High-Throughput JPEG 2000 Lossless" in unsupported_message("1.2.840.10008.1.2.4.201")


def test_corrupt_jpeg_ls_names_transfer_syntax(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    frame = pydicom.encaps.defragment_data(ds.PixelData)
    ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 3]])
    ds.save_as(tmp_path / "trunc_jls.dcm")
    err = _raises("could not be decoded by gdcm .transfer syntax 1.2.840.10008.1.2.4.80, JPEG-LS",
                  tmp_path / "trunc_jls.dcm")
    assert "corrupt or truncated" in str(err)


def test_zero_dimensions(tmp_path: Path) -> None:
    _raises("zero or negative image dimensions", _rg3_copy(tmp_path, Rows=0))
    _raises("zero or negative image dimensions", _png_header_only(tmp_path / "zero.png", 0, 100))


def test_absurd_dimensions(tmp_path: Path) -> None:
    _raises("absurd image dimensions", _png_header_only(tmp_path / "wide.png", 1_000_000, 2), max_pixels=None)


def test_too_many_pixels_checked_from_headers(tmp_path: Path) -> None:
    _raises("too many pixels .3,097,600 > max_pixels=1,000,000", get_testdata_file("RG3_UNCR.dcm"),
            max_pixels=1_000_000)
    # headers claim huge images but hold a few bytes: only a header check can give this message
    _raises("too many pixels", _png_header_only(tmp_path / "bomb.png", 20_000, 20_000))
    _raises("too many pixels", _rg3_copy(tmp_path, Rows=30_000, Columns=30_000))
    _raises("too many pixels", _rg3_copy(tmp_path, NumberOfFrames=40))  # 40 x 3.1 MP > 100 MP default


def test_corrupt_compressed_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("RG3_J2KR.dcm"))
    frames = pydicom.encaps.decode_data_sequence(ds.PixelData)
    ds.PixelData = pydicom.encaps.encapsulate([frames[0][: len(frames[0]) // 50]])
    ds.save_as(tmp_path / "trunc.dcm")
    _raises("could not be decoded", tmp_path / "trunc.dcm")


# --- volumes ----------------------------------------------------------------------------------------


def test_nan_and_inf_in_volumes(tmp_path: Path) -> None:
    import nibabel as nib
    import nrrd

    vol = np.random.default_rng(0).random((8, 9, 10), dtype=np.float32)
    vol[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "nan.nii.gz")
    _raises(r"non-finite values \(NaN: 1, inf: 0\)", tmp_path / "nan.nii.gz")
    vol[3, 4, 5] = np.inf
    nrrd.write(str(tmp_path / "inf.nrrd"), vol)
    _raises(r"non-finite values \(NaN: 0, inf: 1\)", tmp_path / "inf.nrrd")


# --- DICOM series ---------------------------------------------------------------------------------


def _knee(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "knee_mri_dess").glob("*.dcm"))


def _link_all(files: list[Path], folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)


def _sorted_by_position(files: list[Path]) -> list[Path]:
    def key(f: Path) -> float:
        return float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[0])

    return sorted(files, key=key)


def test_missing_slice_is_inconsistent_spacing(shared_data: Path) -> None:
    files = _sorted_by_position(_knee(shared_data))
    _raises("inconsistent slice spacing", files[:10] + files[11:])


def test_tilted_slice_is_inconsistent_orientation(shared_data: Path, tmp_path: Path) -> None:
    files = _knee(shared_data)
    _link_all(files[1:], tmp_path / "series")
    ds = pydicom.dcmread(files[0])
    ds.ImageOrientationPatient = [0, 0.9962, 0.0872, 0, 0.0872, -0.9962]  # 5 degree tilt
    ds.save_as(tmp_path / "series" / files[0].name)
    _raises("inconsistent orientation", tmp_path / "series")


def test_sheared_stack_is_inconsistent_orientation(shared_data: Path, tmp_path: Path) -> None:
    files = _knee(shared_data)
    _link_all(files[1:], tmp_path / "series")
    ds = pydicom.dcmread(files[0])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y + 3.0, z]  # shifted 3 mm in-plane (gantry-tilt-like shear)
    ds.save_as(tmp_path / "series" / files[0].name)
    _raises("inconsistent orientation: slice positions drift", tmp_path / "series")


def test_two_series_in_one_folder_is_mixed(shared_data: Path, tmp_path: Path) -> None:
    _link_all(_knee(shared_data), tmp_path / "series")
    (tmp_path / "series" / "cr.dcm").symlink_to(get_testdata_file("RG3_UNCR.dcm"))
    err = _raises("mixed series in one folder: 2 SeriesInstanceUIDs", tmp_path / "series")
    assert "(24 files)" in str(err) and "(1 files)" in str(err)
    uid = pydicom.dcmread(_knee(shared_data)[0], stop_before_pixels=True).SeriesInstanceUID
    # the caller can pick one series explicitly
    assert read_dicom_series(tmp_path / "series", series_uid=str(uid)).array.shape == (24, 512, 512)


def test_several_radiographs_are_not_a_series(tmp_path: Path) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "a.dcm").symlink_to(get_testdata_file("RG3_UNCR.dcm"))
    (folder / "b.dcm").symlink_to(get_testdata_file("RG1_UNCR.dcm"))
    err = _raises("not a series: 2 of 2 DICOM files are separate 2D images .CR", folder)
    assert "read each file" in str(err)
    _raises("not a series", [folder / "a.dcm", folder / "b.dcm"])
    # two views filed in one series (same SeriesInstanceUID): still not stackable
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    (folder / "b.dcm").unlink()  # a symlink into pydicom-data: never write through it
    ds.save_as(folder / "b.dcm")
    _raises("not a series: 2 of 2", folder)


def test_duplicate_positions_are_mixed(shared_data: Path, tmp_path: Path) -> None:
    files = _knee(shared_data)
    _link_all(files, tmp_path / "series")
    ds = pydicom.dcmread(files[5])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.EchoNumbers = 2
    ds.save_as(tmp_path / "series" / "second_echo.dcm")
    _raises("mixed series: 1 slice.s. share a position", tmp_path / "series")


def test_mixed_matrix_sizes(shared_data: Path, tmp_path: Path) -> None:
    files = _knee(shared_data)
    _link_all(files[1:], tmp_path / "series")
    ds = pydicom.dcmread(files[0])
    ds.PixelData = ds.pixel_array[:256, :256].copy().tobytes()
    ds.Rows, ds.Columns = 256, 256
    ds.save_as(tmp_path / "series" / files[0].name)
    err = _raises("mixed series: matrix", tmp_path / "series")
    assert "256x256" in str(err) and "512x512" in str(err)
