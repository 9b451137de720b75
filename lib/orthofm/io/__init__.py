"""Medical image I/O: read radiographs, raster exports, DICOM series and volumes with exact geometry,
prepare them reversibly for the model, and write results Slicer overlays on the source image.

Conventions (see docs/io.md): arrays (H, W) / (D, H, W); spacing per array axis in mm (None when
unknown); origin/direction in LPS; ``direction[:, a]`` is the unit vector of array axis ``a``.
The MONAI loader lives in :mod:`orthofm.io.monai_transforms` (imported on demand: MONAI is heavy).
"""

from .dicom import read_dicom_file
from .errors import DEFAULT_MAX_PIXELS, ImageReadError, SpacingUnknownWarning
from .mri import PreparedVolume, prepare_volume_slices, slice_indices, stack_2p5d
from .prepare import LetterboxGeometry, PreparedImage, prepare_2d, prepare_stack, robust_range, robust_scale
from .raster import read_raster
from .reader import read_image
from .record import ImageRecord
from .series import read_dicom_series
from .tiles import TiledImage, prepare_tiles
from .volumes import read_nifti, read_nrrd
from .writers import write_like, write_seg_nrrd, write_volume

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "ImageRecord",
    "LetterboxGeometry",
    "PreparedImage",
    "PreparedVolume",
    "SpacingUnknownWarning",
    "TiledImage",
    "prepare_2d",
    "prepare_stack",
    "prepare_tiles",
    "prepare_volume_slices",
    "read_dicom_file",
    "read_dicom_series",
    "read_image",
    "read_nifti",
    "read_nrrd",
    "read_raster",
    "robust_range",
    "robust_scale",
    "slice_indices",
    "stack_2p5d",
    "write_like",
    "write_seg_nrrd",
    "write_volume",
]
