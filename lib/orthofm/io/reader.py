"""``read_image``: one entry point that picks the reader from the file's content, not only its name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .dicom import is_dicom_file, read_dicom_file, read_header
from .errors import DEFAULT_MAX_PIXELS, ImageReadError
from .raster import PNG_SIGNATURE, read_raster
from .record import ImageRecord
from .series import read_dicom_series
from .volumes import read_nifti, read_nrrd

_RASTER_MAGIC = (PNG_SIGNATURE, b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF8")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in (".nii.gz", ".seg.nrrd"):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def read_image(
    path_or_paths: str | Path | Sequence[str | Path],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    apply_voi_lut: bool = True,
) -> ImageRecord:
    """Read a radiograph, a raster export, a DICOM series or a NIfTI/NRRD volume.

    ``path_or_paths``: a file, a folder holding one DICOM series, or a list of DICOM files of one
    series. ``max_pixels`` bounds the decoded size (checked from headers before decoding; None
    disables). ``apply_voi_lut=False`` skips the VOI LUT / window of projection radiographs.
    Raises :class:`ImageReadError` with a message naming the problem.
    """
    if isinstance(path_or_paths, (list, tuple)):
        paths = [Path(p) for p in path_or_paths]
        if len(paths) != 1:
            return read_dicom_series(paths, max_pixels=max_pixels, apply_voi_lut=apply_voi_lut)
        path = paths[0]
    else:
        path = Path(path_or_paths)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path, max_pixels=max_pixels, apply_voi_lut=apply_voi_lut)
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return read_nifti(path, max_pixels=max_pixels)
    if suffix in (".nrrd", ".nhdr", ".seg.nrrd"):
        return read_nrrd(path, max_pixels=max_pixels)
    if is_dicom_file(path):
        return read_dicom_file(path, max_pixels=max_pixels, apply_voi_lut=apply_voi_lut)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise ImageReadError(f"{path}: not an image: empty file")
    if head.startswith(_RASTER_MAGIC) or suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        return read_raster(path, max_pixels=max_pixels)
    if suffix in (".dcm", ".dicom", ""):
        # DICOM without the 128-byte preamble (old exports): only accept it when it parses with pixels
        ds = read_header(path, force=True)
        if "Rows" in ds or "PixelData" in ds:
            if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
                ds.file_meta = ds.get("file_meta") or __import__("pydicom").dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
            return read_dicom_file(path, max_pixels=max_pixels, apply_voi_lut=apply_voi_lut, ds=ds)
    raise ImageReadError(
        f"{path}: not an image: unrecognised format (expected DICOM, PNG/JPEG/TIFF, NIfTI or NRRD)"
    )
