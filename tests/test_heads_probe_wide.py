"""A probe on features wider than its training set fits in the span of the rows, and that is the same model.

Real features: 48x48 pixel thumbnails (2304 dims) of ~150 real KL training knees, so F > N and the shortcut is taken.
"""

from __future__ import annotations

import numpy as np
import pytest

from orthofm.evaluate.backbone_probe import pixel_features
from orthofm.evaluate.splits import sample_fraction
from orthofm.heads.calibration import softmax
from orthofm.heads.labels import load_labels
from orthofm.heads.probe import LogisticProbe, _fit_path, row_space


@pytest.fixture(scope="module")
def wide(shared_data):
    train = load_labels(shared_data / "knee_kl" / "train")
    sub = train.subset(sample_fraction(train.y, train.patients, 0.05, seed=3))
    val = load_labels(shared_data / "knee_kl" / "val")
    val = val.subset(np.arange(0, len(val), len(val) // 60)[:60])
    return sub, pixel_features(sub.paths, size=48), pixel_features(val.paths, size=48)


def test_the_row_space_fit_is_the_full_fit(wide) -> None:
    sub, x, x_val = wide
    assert x.shape[1] > x.shape[0]
    probe = LogisticProbe(5, ordinal=True, cs=(1e-3, 1e-2, 1e-1), folds=3, max_iter=2000)
    fit = probe.fit(x, sub.y, list(sub.patients), seed=0)
    assert fit.info["row_space_dims"] <= x.shape[0]
    xs = probe.scaler(x)
    path = tuple(c for c in probe.cs if c <= probe.c)
    w, b = _fit_path(xs, sub.y, 5, path, True, 2000)[-1]  # the same fit on all 2304 columns
    direct = probe.scaler(x_val).astype(np.float64) @ w.T + b
    np.testing.assert_allclose(probe.logits(x_val), direct, atol=2e-3 * np.abs(direct).max())
    np.testing.assert_allclose(softmax(probe.logits(x_val)), softmax(direct), atol=2e-3)


def test_narrow_features_take_the_plain_path() -> None:
    rng = np.random.default_rng(0)
    assert row_space(rng.normal(size=(50, 20))) is None
    x = rng.normal(size=(20, 50))
    basis = row_space(x)
    assert basis.shape == (50, 20)
    np.testing.assert_allclose(basis.T @ basis, np.eye(20), atol=1e-8)
    np.testing.assert_allclose(x @ basis @ basis.T, x, atol=1e-8)  # every row lies in the span
