"""Anomaly metrics on hand-made cases whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from orthofm.evaluate.anomaly_metrics import (
    aupro,
    auroc,
    auroc_ci95,
    image_auroc,
    pixel_auroc,
    pro_curve,
    roc_curve,
    spearman,
)


def test_auroc_known_values_and_ties():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    # one positive tied with one negative: 3 of 4 pairs won, 1 tied -> (3 + 0.5) / 4
    assert auroc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=500).round(1), rng.integers(0, 2, 500)
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert image_auroc(list(s), list(y)) == pytest.approx(roc_auc_score(y, s))


def test_auroc_rejects_single_class_and_nan():
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([np.nan, 0.2], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        auroc([0.1, 0.2, 0.3], [0, 1])


def _two_region_case():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:3, 1:3] = True  # region A (4 px)
    mask[6:9, 6:9] = True  # region B (9 px)
    return mask


def test_pixel_auroc_perfect_inverted_and_list_input():
    mask = _two_region_case()
    perfect = mask.astype(float)
    assert pixel_auroc(perfect, mask) == 1.0
    assert pixel_auroc(1 - perfect, mask) == 0.0
    assert pixel_auroc([perfect, perfect], [mask, mask]) == 1.0
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc([perfect[:5]], [mask])


def test_aupro_perfect_and_half_detected():
    mask = _two_region_case()
    assert aupro(mask.astype(float), mask) == pytest.approx(1.0)
    # region A scores highest, region B never above background: PRO = 0.5 from FPR 0 on,
    # and 1.0 only once every normal pixel is admitted (FPR 1 > 0.3) -> AUPRO = 0.5
    score = np.zeros((10, 10))
    score[mask] = 0.0
    score[1:3, 1:3] = 1.0
    score[~mask] = 0.5
    assert aupro(score, mask) == pytest.approx(0.5)


def test_aupro_region_weighting_is_per_region_not_per_pixel():
    # the small region fully found, the big one not: PRO counts regions equally (0.5), while the pixel
    # fraction found would be 4/13
    mask = _two_region_case()
    score = np.where(mask, 0.0, 0.5)
    score[1:3, 1:3] = 1.0
    fpr, pro = pro_curve(score, mask)
    assert pro[1] == pytest.approx(0.5) and fpr[1] == 0.0


def test_aupro_linear_interpolation_at_max_fpr():
    # a single anomalous pixel that scores like the lowest normal: found only when all normals are admitted
    # -> PRO rises linearly? No: tied scores enter at once, so the curve jumps (0,0) -> (1, 1);
    # interpolating at FPR 0.3 gives PRO 0.3 and the area up to 0.3 is 0.3*0.3/2 -> normalised 0.15
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    score = np.ones((4, 4))
    assert aupro(score, mask) == pytest.approx(0.15)


def test_aupro_stack_of_images_counts_regions_across_images():
    m1 = np.zeros((6, 6), dtype=bool)
    m1[1:3, 1:3] = True
    m2 = np.zeros((6, 6), dtype=bool)
    m2[3:5, 3:5] = True
    good = m1.astype(float)
    bad = np.where(m2, 0.0, 0.5)
    assert aupro(np.stack([good, bad]), np.stack([m1, m2])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one ground-truth region"):
        aupro(np.zeros((6, 6)), np.zeros((6, 6), dtype=bool))


def test_spearman():
    assert spearman([1, 2, 3, 4], [0, 1, 2, 3]) == pytest.approx(1.0)
    assert spearman([4, 3, 2, 1], [0, 1, 2, 3]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2])


def test_paired_bootstrap_gain_detects_a_real_improvement_only():
    from orthofm.evaluate.heatmap_eval import paired_bootstrap_gain

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60), np.ones(60)].astype(int)
    weak = y + rng.normal(scale=2.0, size=y.size)
    strong = y + rng.normal(scale=0.3, size=y.size)
    better = paired_bootstrap_gain(strong, {"a": weak, "b": weak[::-1].copy()}, y, n=300)
    assert better["gain"] > 0.2 and better["helps"] and better["ci95_low"] > 0
    same = paired_bootstrap_gain(weak, {"a": weak}, y, n=300)
    assert same["gain"] == 0 and not same["helps"]


def test_roc_curve_matches_sklearn_and_its_area_is_the_auroc():
    rng = np.random.default_rng(1)
    s, y = rng.normal(size=300).round(1), rng.integers(0, 2, 300)  # rounded: many ties
    fpr, tpr = roc_curve(s, y)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapz(tpr, fpr) == pytest.approx(auroc(s, y))
    ref_fpr, ref_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([0.1, 0.2], [0, 0])


def test_auroc_ci95_brackets_the_estimate_and_shrinks_with_more_images():
    rng = np.random.default_rng(2)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return rng.normal(size=n) + y, y  # true AUROC ~0.76

    widths = []
    for n in (60, 2000):
        s, y = sample(n)
        lo, hi = auroc_ci95(s, y, n=300)
        assert lo <= auroc(s, y) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # ~1/sqrt(n): 5.8x narrower expected
    lo, hi = auroc_ci95([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], n=200)
    assert lo == hi == 1.0  # perfectly separated in every resample


def test_verdict_changes_the_default_only_on_measured_evidence():
    from orthofm.evaluate.heatmap_eval import verdict

    def report(recon_ci, patch_ci, helps):
        methods = {
            "recon": {"auroc_kl0_vs_kl34": sum(recon_ci) / 2, "auroc_ci95": list(recon_ci)},
            "patchknn": {"auroc_kl0_vs_kl34": sum(patch_ci) / 2, "auroc_ci95": list(patch_ci)},
        }
        gain = {"both_calibrated": {"gain": 0.05 if helps else -0.01, "helps": helps}}
        pixel = {"recon": {"aupro": 0.3}, "patchknn": {"aupro": 0.5}}
        return {
            "image_level": {"methods": methods, "combination_gain": gain},
            "pixel_level": {"methods": pixel},
        }

    # recon slightly higher but its interval includes 0.5: nothing earned a change, patchknn stays
    v = verdict(report((0.40, 0.62), (0.35, 0.60), helps=False))
    assert v["default_method"] == "patchknn" and not v["best_single_separates"]
    assert v["best_single"] == "recon" and v["best_pixel_aupro"] == "patchknn"
    # recon measurably separates: it becomes the default
    assert verdict(report((0.60, 0.80), (0.45, 0.60), helps=False))["default_method"] == "recon"
    # a combination whose gain interval is above 0 wins
    assert verdict(report((0.60, 0.80), (0.45, 0.60), helps=True))["default_method"] == "both"


def test_verdict_reports_the_global_score_without_making_it_a_map_method():
    from orthofm.evaluate.heatmap_eval import verdict
    from orthofm.heatmaps.report import _verdict_line

    methods = {"patchknn": {"auroc_kl0_vs_kl34": 0.53, "auroc_ci95": [0.47, 0.58]},
               "global": {"auroc_kl0_vs_kl34": 0.67, "auroc_ci95": [0.61, 0.73]}}
    v = verdict({"image_level": {"methods": methods}, "pixel_level": {"methods": {}}})
    assert v["default_method"] == "patchknn" and v["global_separates"] is True  # the map default is unchanged
    assert "`global` score (not a map) separates KL 0 from KL 3-4 (95 % interval 0.61-0.73)" in _verdict_line(v)
    methods["global"]["auroc_ci95"] = [0.45, 0.60]
    v = verdict({"image_level": {"methods": methods}, "pixel_level": {"methods": {}}})
    assert v["global_separates"] is False and "does not separate" in _verdict_line(v)
    del methods["global"]
    assert "global_separates" not in verdict({"image_level": {"methods": methods}, "pixel_level": {"methods": {}}})
