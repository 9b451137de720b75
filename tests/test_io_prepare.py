"""Reversible preparation: forward letterbox + inverse mapping land on the original pixel (sub-pixel)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from orthofm.io import (
    LetterboxGeometry,
    SpacingUnknownWarning,
    prepare_2d,
    read_image,
    robust_range,
    robust_scale,
)
from orthofm.io.mri import prepare_volume_slices, slice_indices, stack_2p5d
from orthofm.io.prepare import IMAGENET_MEAN, IMAGENET_STD, sample_canvas_map
from orthofm.io.tiles import prepare_tiles


def _read(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpacingUnknownWarning)
        return read_image(path).array


@pytest.fixture(scope="module")
def wrist(shared_data: Path) -> np.ndarray:
    a = _read(next((shared_data / "wrist_xray").glob("*.png")))
    assert a.shape == (727, 494)  # odd height: no symmetric shortcut in the geometry
    return a


def _centroid(m: np.ndarray, centre: tuple[float, float], radius: int = 25) -> tuple[float, float]:
    r0, c0 = round(centre[0]) - radius, round(centre[1]) - radius
    win = np.clip(m[max(r0, 0) : r0 + 2 * radius + 1, max(c0, 0) : c0 + 2 * radius + 1], 0, None)
    rr, cc = np.mgrid[: win.shape[0], : win.shape[1]]
    return (float((win * rr).sum() / win.sum()) + max(r0, 0), float((win * cc).sum() / win.sum()) + max(c0, 0))


def _marker_round_trip(image: np.ndarray, point: tuple[int, int], size: int = 224) -> float:
    """Add a blob at ``point`` to the real image, prepare both, invert the model-resolution difference."""
    rr, cc = np.mgrid[: image.shape[0], : image.shape[1]]
    sigma = max(image.shape) / size * 1.5  # ~1.5 model pixels wide
    blob = np.exp(-((rr - point[0]) ** 2 + (cc - point[1]) ** 2) / (2 * sigma**2)).astype(np.float32)
    lo, hi = robust_range(image)
    marked = image + 0.3 * (hi - lo) * blob
    prep = prepare_2d(marked, size, value_range=(lo, hi * 10))  # wide range: the marker is never clipped
    base = prepare_2d(image, size, value_range=(lo, hi * 10))
    model_map = ((prep.tensor[0] - base.tensor[0]) * IMAGENET_STD[0]).numpy()  # marker at model resolution
    assert prep.tensor.shape == (3, size, size)
    back = prep.to_original(model_map)
    assert back.shape == image.shape
    got = _centroid(back, point)
    return float(np.hypot(got[0] - point[0], got[1] - point[1]))


@pytest.mark.parametrize("point", [(401, 217), (60, 430), (690, 33), (363, 246)])
def test_marker_round_trip_subpixel_wrist(wrist: np.ndarray, point: tuple[int, int]) -> None:
    assert _marker_round_trip(wrist, point) < 0.5


def test_marker_round_trip_subpixel_odd_crop_of_cr() -> None:
    cr = _read(get_testdata_file("RG3_UNCR.dcm"))[100:1759, 300:1301]  # 1659 x 1001: odd both ways
    for point in [(830, 500), (201, 777), (1500, 120)]:
        assert _marker_round_trip(cr, point) < 0.5


def test_analytic_model_map_inverts_exactly(wrist: np.ndarray) -> None:
    prep = prepare_2d(wrist, 224)
    point = np.array([[511.0, 123.0]])
    m_r, m_c = prep.to_model_coords(point)[0]
    yy, xx = np.mgrid[:224, :224]
    model_map = np.exp(-((yy - m_r) ** 2 + (xx - m_c) ** 2) / (2 * 2.0**2))
    got = _centroid(prep.to_original(model_map), (511, 123), radius=30)
    assert np.hypot(got[0] - 511, got[1] - 123) < 0.1
    np.testing.assert_allclose(prep.to_original_coords(prep.to_model_coords(point)), point, atol=1e-9)


def test_patch_map_lands_on_its_pixels(wrist: np.ndarray) -> None:
    prep = prepare_2d(wrist, 224)
    patch = np.zeros((14, 14), dtype=np.int32)
    patch[7, 9] = 1  # one 16x16 patch of the canvas
    back = prep.to_original(patch, order=0)
    rows, cols = np.nonzero(back)
    canvas = prep.to_model_coords(np.stack([rows, cols], 1).astype(float))
    assert canvas[:, 0].min() >= 7 * 16 - 0.5 and canvas[:, 0].max() <= 8 * 16 - 0.5
    assert canvas[:, 1].min() >= 9 * 16 - 0.5 and canvas[:, 1].max() <= 10 * 16 - 0.5
    assert back.dtype == np.int32 and len(rows) > 100


def _map_coordinates_reference(m: np.ndarray, geometry: LetterboxGeometry, order: int) -> np.ndarray:
    """The inverse sampled point by point with scipy (the former implementation): ground truth."""
    from scipy.ndimage import map_coordinates

    (mh, mw), (sh, sw), (h, w) = m.shape, geometry.canvas_shape, geometry.original_shape
    canvas = geometry.to_canvas(np.stack([np.arange(max(h, w))] * 2, 1).astype(float))
    rr, cc = np.meshgrid((canvas[:h, 0] + 0.5) * mh / sh - 0.5, (canvas[:w, 1] + 0.5) * mw / sw - 0.5,
                         indexing="ij")
    src = m if order == 0 else m.astype(np.float32)
    return map_coordinates(src, np.stack([rr, cc]), order=order, mode="nearest")


@pytest.mark.parametrize("shape, size", [((1760, 1760), 224), ((727, 494), 224), ((1659, 1001), (224, 160)),
                                         ((5, 7), 224), ((300, 40), 32)])
def test_separable_inverse_equals_pointwise_sampling(shape: tuple[int, int], size) -> None:
    geometry = LetterboxGeometry.fit(shape, size)
    rng = np.random.default_rng(0)
    for map_shape in [(14, 14), geometry.canvas_shape, (3, 5)]:
        heat = rng.random(map_shape).astype(np.float32)
        got = sample_canvas_map(heat, geometry, order=1)
        assert got.shape == shape and got.dtype == np.float32
        np.testing.assert_allclose(got, _map_coordinates_reference(heat, geometry, 1), atol=1e-6)
        labels = rng.integers(0, 7, map_shape).astype(np.int16)
        got0 = sample_canvas_map(labels, geometry, order=0)
        assert got0.dtype == np.int16
        np.testing.assert_array_equal(got0, _map_coordinates_reference(labels, geometry, 0))
    stacked = sample_canvas_map(np.stack([heat, 2 * heat]), geometry)  # (C, h, w) -> (C, H, W)
    np.testing.assert_allclose(stacked[1], 2 * stacked[0], rtol=1e-5)
    with pytest.raises(ValueError, match="order must be 0"):
        sample_canvas_map(heat, geometry, order=3)


def test_letterbox_layout_and_normalisation(wrist: np.ndarray) -> None:
    prep = prepare_2d(wrist, 224)
    g = prep.geometry
    assert g.resized_shape == (224, 152) and g.pad == (0, 36)  # 727x494 -> aspect kept
    assert prep.tensor.dtype.is_floating_point and prep.mask.sum() == 224 * 152
    pad_value = (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert np.allclose(prep.tensor[1, :, :36].numpy(), pad_value)
    scaled = prep.tensor[0].numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert scaled.min() >= -1e-6 and scaled.max() <= 1 + 1e-6


def test_letterbox_preserves_physical_aspect_for_anisotropic_pixels() -> None:
    g = LetterboxGeometry.fit((24, 512), 224, spacing=(1.5, 0.3125))  # 36 mm x 160 mm reformat
    assert g.resized_shape == (50, 224)
    assert g.scale[0] / g.scale[1] == pytest.approx(1.5 / 0.3125, rel=0.02)


def test_robust_scale_ignores_burnt_in_text(wrist: np.ndarray) -> None:
    marked = wrist.copy()
    marked[:10, :20] = 1e6  # 200 px of saturated annotation
    np.testing.assert_allclose(robust_scale(marked)[20:], robust_scale(wrist)[20:], atol=0.02)
    out = robust_scale(wrist)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.all(robust_scale(np.full((5, 5), 7.0)) == 0)


def test_tiles_cover_and_blend_back(wrist: np.ndarray) -> None:
    tiled = prepare_tiles(wrist, 224, tile=256, overlap=0.25)
    assert len(tiled.tiles) == 12  # rows start 0, 192, 384, 471; columns 0, 192, 238
    covered = np.zeros(wrist.shape, dtype=int)
    for r0, c0, r1, c1 in tiled.boxes:
        covered[r0:r1, c0:c1] += 1
    assert covered.min() >= 1
    maps = [(t.tensor[0].numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]) for t in tiled.tiles]
    back = tiled.to_original(maps)
    ref = robust_scale(wrist, value_range=tiled.value_range)
    assert np.corrcoef(back.ravel(), ref.ravel())[0, 1] > 0.99
    labels = tiled.to_original([np.full((224, 224), i + 1, dtype=np.int16) for i in range(12)], order=0)
    assert set(np.unique(labels)) == set(range(1, 13))


def test_mri_slices_2p5d_and_back_to_volume(shared_data: Path, tmp_path: Path) -> None:
    from orthofm.io import write_like

    record = read_image(shared_data / "knee_mri_dess")
    assert list(slice_indices(24, max_slices=5, center_fraction=0.5)) == [6, 9, 12, 14, 17]
    np.testing.assert_array_equal(stack_2p5d(record.array, 0)[0], record.array[0])  # edge repeats
    prepared = prepare_volume_slices(record, indices=[10, 11, 12], context=1)
    batch = prepared.tensors()
    assert tuple(batch.shape) == (3, 3, 224, 224)
    next_of_10 = batch[0, 2].numpy() * IMAGENET_STD[2] + IMAGENET_MEAN[2]
    centre_of_11 = batch[1, 1].numpy() * IMAGENET_STD[1] + IMAGENET_MEAN[1]
    np.testing.assert_allclose(next_of_10, centre_of_11, atol=1e-5)  # slice 11 in both stacks
    centre = [(t[1].numpy() * IMAGENET_STD[1] + IMAGENET_MEAN[1]) for t in batch]
    vol = prepared.to_volume(centre, fill=np.nan)
    assert vol.shape == (24, 512, 512) and np.isnan(vol[0]).all()
    ref = robust_scale(record.array, value_range=prepared.value_range)
    for k in (10, 11, 12):
        assert np.corrcoef(vol[k].ravel(), ref[k].ravel())[0, 1] > 0.97
    sparse = prepare_volume_slices(record, indices=[10, 12])
    filled = sparse.to_volume([np.ones((14, 14)), 3 * np.ones((14, 14))], interpolate=True)
    np.testing.assert_allclose(filled[11], 2.0)
    out = write_like(np.nan_to_num(vol), record, tmp_path / "heat.nrrd")
    back = read_image(out)
    np.testing.assert_array_equal(back.array, np.nan_to_num(vol))
    assert back.spacing == pytest.approx(record.spacing) and back.origin == pytest.approx(record.origin)
    np.testing.assert_allclose(back.direction, record.direction, atol=1e-9)


def test_reformat_axis_keeps_physical_aspect(shared_data: Path) -> None:
    record = read_image(shared_data / "knee_mri_dess")
    prepared = prepare_volume_slices(record, indices=[256], axis=1)  # axial-like reformat: 24 x 512 px
    assert prepared.slices[0].geometry.resized_shape == (50, 224)
    back = prepared.to_volume([np.ones((14, 14))], fill=0.0)
    assert back.shape == (24, 512, 512) and back[:, 256].min() == 1.0 and back[:, 255].max() == 0.0


def test_percentiles_by_counting_match_numpy_exactly() -> None:
    """robust_range counts instead of sorting; it must give numpy's numbers bit for bit, ties and tails included."""
    from orthofm.io.prepare import percentiles_by_counting

    rng = np.random.default_rng(7)
    quantised = np.round(rng.random(20_000) * 1023).astype(np.float32) / 1023
    quantised[:9_000] = 1.0  # a saturated film: almost half its pixels in the top bin
    cases = {
        "grey levels": (rng.integers(0, 4096, 30_000) - 1000).astype(np.float32),
        "uniform": rng.random(30_000).astype(np.float32),
        "heavy tail": np.exp(rng.normal(0, 5, 30_000)).astype(np.float32),
        "quantised, saturated": quantised,
        "one value": np.full(17, 3.5, dtype=np.float32),
        "two values": np.array([0, 1], dtype=np.float32),
        "one sample": np.array([2.0], dtype=np.float32),
    }
    for name, flat in cases.items():
        for pct in ((0.5, 99.5), (0.0, 100.0), (1.0, 99.0), (50.0, 50.0), (12.345, 87.6)):
            got = percentiles_by_counting(flat, pct)
            np.testing.assert_array_equal(got, np.percentile(flat, pct), err_msg=f"{name} {pct}")
            assert got.dtype == np.float64


def test_robust_range_of_a_film_is_numpys_and_ignores_nans() -> None:
    film = _read(get_testdata_file("RG3_UNCR.dcm"))  # 1760 px: the strided subsample path
    assert robust_range(film) == tuple(float(v) for v in np.percentile(film.ravel()[::4], (0.5, 99.5)))
    holes = film.copy()
    holes[:100] = np.nan
    assert robust_range(holes) == tuple(float(v) for v in np.nanpercentile(holes.ravel()[::4], (0.5, 99.5)))


def test_letterbox_clips_before_resizing_like_scaling_first(wrist: np.ndarray) -> None:
    """prepare clips to the range at full resolution and scales the small result: the same canvas as scaling
    the film to [0, 1] first (to float32 rounding), burnt-in saturation included."""
    from orthofm.io.prepare import letterbox, resize_2d

    marked = wrist.copy()
    marked[:40, :200] = marked.max() * 3  # a burnt-in label far above the range
    lo, hi = robust_range(marked)
    geometry = LetterboxGeometry.fit(marked.shape, 224)
    canvas, mask = letterbox(marked[None], geometry, 0.0, (lo, hi))
    top, left = geometry.pad
    rh, rw = geometry.resized_shape
    reference = np.clip(resize_2d(robust_scale(marked, value_range=(lo, hi)), (rh, rw)), 0, 1)
    np.testing.assert_allclose(canvas[0, top : top + rh, left : left + rw], reference, atol=2e-6)
    assert mask.sum() == rh * rw and canvas[0][~mask].max() == 0.0
    flat, _ = letterbox(np.full((1, 50, 80), 7.0), LetterboxGeometry.fit((50, 80), 32), 0.0, (7.0, 7.0))
    assert not flat.any()  # a constant image scales to 0, like robust_scale


def test_resize_is_pillows_antialiased_bilinear(wrist: np.ndarray) -> None:
    """resize_2d runs in torch (no copy into a Pillow image) with Pillow's filter and half-pixel convention."""
    from PIL import Image

    from orthofm.io.prepare import resize_2d

    film = _read(get_testdata_file("RG3_UNCR.dcm"))
    for image, shape in ((wrist, (224, 152)), (film, (224, 224)), (film, (300, 97)), (wrist[:50, :60], (120, 90))):
        pillow = np.asarray(Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
            (shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)
        ours = resize_2d(image, shape)
        assert ours.shape == shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, pillow, rtol=0, atol=2e-5 * float(np.abs(image).max()))
    labels = np.kron(np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((10, 10), np.float32))
    assert set(np.unique(resize_2d(labels, (7, 11), order=0))) <= set(range(6))  # nearest keeps label values
