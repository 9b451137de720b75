"""Readers on real files: pydicom-data radiographs and the shared knee MRI / hip / wrist / knee images."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from orthofm.io import ImageRecord, SpacingUnknownWarning, read_image


def _rg3(name: str) -> ImageRecord:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpacingUnknownWarning)
        return read_image(get_testdata_file(name))


def test_rg3_uncompressed_and_j2k_lossless_identical() -> None:
    unc, j2kr = _rg3("RG3_UNCR.dcm"), _rg3("RG3_J2KR.dcm")
    assert unc.array.shape == (1760, 1760) and unc.array.dtype == np.float32
    np.testing.assert_array_equal(unc.array, j2kr.array)


def test_rg3_j2k_lossy_close() -> None:
    unc, j2ki = _rg3("RG3_UNCR.dcm"), _rg3("RG3_J2KI.dcm")
    corr = np.corrcoef(unc.array.ravel(), j2ki.array.ravel())[0, 1]
    assert corr > 0.99


def test_rg3_spacing_unknown_warns() -> None:
    with pytest.warns(SpacingUnknownWarning, match="spacing is unknown"):
        rec = read_image(get_testdata_file("RG3_UNCR.dcm"))
    assert rec.spacing is None
    assert rec.metadata["spacing_source"] is None


def test_knee_mri_shuffled_series(shared_data) -> None:
    files = sorted((shared_data / "knee_mri_dess").glob("*.dcm"))
    random.Random(0).shuffle(files)
    rec = read_image(files)
    assert rec.array.shape == (24, 512, 512)
    assert rec.spacing == pytest.approx((1.5, 0.3125, 0.3125))


def test_hip_j2k_rgb_and_pngs_read(shared_data) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpacingUnknownWarning)
        for path in sorted((shared_data / "hip_xray").glob("*.dcm"))[:3]:
            rec = read_image(path)
            assert rec.array.shape == (331, 331) and rec.photometric == "RGB"
        wrist = read_image(next((shared_data / "wrist_xray").glob("*.png")))
        assert wrist.array.shape == (727, 494)
        knee = read_image(next((shared_data / "knee_kl" / "train" / "0").glob("*.png")))
        assert knee.array.shape == (224, 224)
