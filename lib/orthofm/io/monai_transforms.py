"""MONAI-compatible loading (for MONAI Label pipelines) built on :func:`orthofm.io.read_image`.

Output matches MONAI's ``LoadImage(reader="ITKReader")`` layout: spatial axes in ITK order (x, y, z),
i.e. the reverse of our (D, H, W), and a RAS ``affine``; a 2D image becomes (W, H, 1) with a 4x4
affine like ITK's DICOM reading, so MONAI Label writers put results back on the source geometry.
Unlike ITKReader, single radiographs are read with pydicom: MONOCHROME1 inverted, VOI LUT applied.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from .errors import DEFAULT_MAX_PIXELS
from .geometry import LPS_TO_RAS, affine_lps
from .reader import read_image
from .record import ImageRecord
from .writers import record_geometry


def record_to_metatensor(record: ImageRecord, keep_2d: bool = False) -> MetaTensor:
    """(W, H[, 1]) / (W, H, D) MetaTensor with RAS affine from an ImageRecord (no channel axis)."""
    spacing, origin, direction = record_geometry(record)
    from .geometry import full_geometry

    sp, o, d = full_geometry(record.shape, spacing, origin, direction)
    aff_lps = affine_lps(sp, o, d)
    ijk = np.eye(4)
    ijk[:3, :3] = aff_lps[:3, :3][:, ::-1]  # array (k, j, i) -> ITK (i, j, k)
    ijk[:3, 3] = aff_lps[:3, 3]
    affine = np.diag([*np.diag(LPS_TO_RAS), 1.0]) @ ijk
    array = record.array if record.is_volume else record.array[None]
    data = np.ascontiguousarray(array.transpose(2, 1, 0))
    if keep_2d and not record.is_volume:
        data = data[:, :, 0]
        affine = affine[[0, 1, 3]][:, [0, 1, 3]]
    src = record.source[0] if isinstance(record.source, list) else record.source
    meta: dict[str, Any] = {
        "filename_or_obj": src,
        "spatial_shape": np.asarray(data.shape),
        "original_channel_dim": float("nan"),
        "space": "RAS",
        "spacing": np.asarray(sp[::-1]),
        "original_affine": torch.as_tensor(affine, dtype=torch.float64),
        "orthofm": {
            "modality": record.modality,
            "body_part": record.body_part,
            "laterality": record.laterality,
            "view": record.view,
            "spacing_known": record.spacing is not None,
            "voi": record.metadata.get("voi"),
            "inverted": record.metadata.get("inverted"),
        },
    }
    return MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)


class LoadOrthoImage(Transform):
    """Path (or list of DICOM files) -> MetaTensor, via :func:`read_image`."""

    def __init__(
        self, max_pixels: int | None = DEFAULT_MAX_PIXELS, apply_voi_lut: bool = True, keep_2d: bool = False
    ) -> None:
        self.max_pixels = max_pixels
        self.apply_voi_lut = apply_voi_lut
        self.keep_2d = keep_2d

    def __call__(self, path: str | Sequence[str]) -> MetaTensor:
        record = read_image(path, max_pixels=self.max_pixels, apply_voi_lut=self.apply_voi_lut)
        return record_to_metatensor(record, keep_2d=self.keep_2d)


class LoadOrthoImaged(MapTransform):
    """Dictionary version of :class:`LoadOrthoImage` (drop-in for ``LoadImaged`` in MONAI Label)."""

    def __init__(
        self,
        keys: KeysCollection,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        apply_voi_lut: bool = True,
        keep_2d: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadOrthoImage(max_pixels, apply_voi_lut, keep_2d)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d
