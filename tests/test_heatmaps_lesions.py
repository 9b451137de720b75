"""Synthetic lesions on a real normal knee radiograph: position, size, masks, seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orthofm.evaluate.lesions import (
    KINDS,
    LesionSpec,
    insert_cortical_break,
    insert_intensity_defect,
    insert_lesion,
    insert_texture_defect,
    random_lesions,
)


@pytest.fixture(scope="module")
def knee(shared_data: Path) -> np.ndarray:
    path = min((shared_data / "knee_kl" / "val" / "0").glob("*.png"))
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


def test_intensity_defect_changes_only_its_disc(knee):
    out, mask = insert_intensity_defect(knee, (100, 120), 10, strength=-0.4)
    rr, cc = np.nonzero(mask)
    assert abs(rr.mean() - 100) < 0.5 and abs(cc.mean() - 120) < 0.5
    radius = np.sqrt(mask.sum() / np.pi)
    assert 6 < radius < 10  # half-strength contour of the raised-cosine edge (0.6 R .. R)
    ys, xs = np.nonzero(np.abs(out - knee) > 1e-3)
    assert np.hypot(ys - 100, xs - 120).max() <= 10.5
    assert out[mask].mean() < knee[mask].mean()  # lytic: darker
    assert out.min() >= knee.min() and out.max() <= knee.max()


def test_texture_defect_keeps_mean_but_changes_texture(knee):
    out, mask = insert_texture_defect(knee, (110, 110), 14, strength=0.3, seed=3)
    diff = out[mask] - knee[mask]
    assert np.abs(diff).mean() > 5  # visibly different texture (8-bit grey levels)
    assert abs(out[mask].mean() - knee[mask].mean()) < 0.5 * np.abs(diff).mean()
    ys, xs = np.nonzero(np.abs(out - knee) > 1e-3)
    assert np.hypot(ys - 110, xs - 110).max() <= 14.5  # nothing changes outside the lesion's radius
    out2, _ = insert_texture_defect(knee, (110, 110), 14, strength=0.3, seed=3)
    assert np.array_equal(out, out2)


def test_cortical_break_is_a_thin_dark_line_of_the_given_length(knee):
    out, mask = insert_cortical_break(knee, (112, 112), 40, angle=0.0, width=2.0, depth=0.8)
    rows, cols = np.nonzero(mask)
    assert rows.min() >= 110 and rows.max() <= 114  # thin: about 2-3 px across
    assert 38 <= cols.max() - cols.min() + 1 <= 44  # ~40 px long (+ rounded ends)
    assert (out[mask] <= knee[mask] + 1e-4).all() and out[mask].mean() < knee[mask].mean() - 5


def test_random_lesions_seeded_non_overlapping_and_on_bone(knee):
    a = random_lesions(knee, n=3, seed=7)
    b = random_lesions(knee, n=3, seed=7)
    c = random_lesions(knee, n=3, seed=8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)
    assert len(a.lesions) == 3 and {s.kind for s in a.lesions} <= set(KINDS)
    # every lesion's own mask re-created from its spec lies inside the union mask
    for spec in a.lesions:
        _, m = insert_lesion(knee, spec)
        assert m.any() and (m <= a.mask).all()
        assert knee[int(spec.center[0]), int(spec.center[1])] >= np.quantile(knee, 0.3)  # on bright bone
    assert a.mask.mean() < 0.2


def test_random_lesions_rejects_bad_arguments(knee):
    with pytest.raises(ValueError, match="unknown lesion kind"):
        random_lesions(knee, kinds=("crack",))
    with pytest.raises(ValueError, match="2D"):
        random_lesions(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="empty"):
        random_lesions(knee, where=np.zeros_like(knee, dtype=bool))
    with pytest.raises(ValueError, match="unknown lesion kind"):
        insert_lesion(knee, LesionSpec("crack", (1, 1), 2, 0.5))
