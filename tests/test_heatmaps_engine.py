"""Heatmap engine on real images with tiny random backbones: banks, alignment on a non-square original,
output geometry, JSON regions, MRI volumes, and the CLI. Accuracy of random models is not asserted."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from orthofm.evaluate.lesions import insert_intensity_defect
from orthofm.heatmaps import (
    BankBuildConfig,
    BankError,
    HeatmapConfig,
    HeatmapEngine,
    NormalBank,
    build_bank,
    find_regions,
    greedy_coreset,
    split_calibration,
)
from orthofm.heatmaps.output import save_result
from orthofm.io import read_image
from orthofm.models import BackboneConfig, MAEDecoderConfig, PreprocessConfig, backbone_from_config

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2}


def tiny_backbone(seed: int = 0, mae: bool = True):
    torch.manual_seed(seed)
    cfg = BackboneConfig(
        arch="vit_small_patch16_dinov3_qkvb",
        model_kwargs=dict(TINY),
        preprocess=PreprocessConfig(mean=(0.5,) * 3, std=(0.25,) * 3),
        mae_decoder=MAEDecoderConfig(dim=32, depth=1, num_heads=2) if mae else None,
    )
    return backbone_from_config(cfg).eval()


def read(path) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_image(path)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CI box has 2 cores shared with pretraining: torch's default threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


@pytest.fixture(scope="module")
def wrist(shared_data: Path):
    record = read(next((shared_data / "wrist_xray").glob("*.png")))
    assert record.array.shape == (727, 494)  # non-square, portrait: letterboxed with side padding
    return record


@pytest.fixture(scope="module")
def knee_paths(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "knee_kl" / "train" / "0").glob("*.png"))[:8]


def test_find_regions_on_a_hand_made_map():
    hm = np.zeros((40, 60), dtype=np.float32)
    hm[5:10, 5:15] = 2.0
    hm[7, 8] = 3.0  # peak of region A (50 px)
    hm[30:33, 40:42] = 5.0  # region B: higher peak, 6 px
    hm[20, 20] = 1.5  # a single pixel: dropped by min_pixels
    regions = find_regions(
        hm, 1.0, spacing=(0.5, 0.25), origin=(10.0, 20.0, 30.0), direction=np.eye(3), min_pixels=2
    )
    assert [r.n_pixels for r in regions] == [6, 50]
    b, a = regions
    assert b.peak == 5.0 and b.bbox_min_index == [30, 40] and b.bbox_max_index == [32, 41]
    assert a.peak == 3.0 and a.peak_index == [7, 8] and a.mean == pytest.approx((49 * 2 + 3) / 50)
    np.testing.assert_allclose(a.peak_lps, [10 + 7 * 0.5, 20 + 8 * 0.25, 30])
    np.testing.assert_allclose(a.bbox_min_lps, [12.5, 21.25, 30]) and np.testing.assert_allclose(
        a.size_mm, [2.5, 2.5]
    )
    assert find_regions(hm, 10.0) == []
    assert len(find_regions(hm, 1.0, max_regions=1)) == 1


# -- coreset and bank ------------------------------------------------------------------------------
def test_greedy_coreset_covers_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 32)) * 10
    feats = np.concatenate([c + rng.normal(size=(200, 32)) * 0.1 for c in centres]).astype(np.float32)
    idx = greedy_coreset(feats, 5, projection_dim=16, seed=0)
    assert len(set(idx.tolist())) == 5
    assert sorted(set((idx // 200).tolist())) == [0, 1, 2, 3, 4]  # one point from every cluster
    assert np.array_equal(greedy_coreset(feats, 5, projection_dim=16, seed=0), idx)
    assert len(greedy_coreset(feats, feats.shape[0])) == feats.shape[0]
    with pytest.raises(ValueError):
        greedy_coreset(feats, 0)


def test_split_calibration_keeps_patients_together():
    names = [f"{pid}{side}.png" for pid in range(9000001, 9000021) for side in "LR"]
    bank, calib = split_calibration(names, 0.2, 100, seed=0, group_regex=r"^(\d+)[LR]$")
    assert len(calib) == 8 and len(bank) == 32
    ids = lambda xs: {x[:7] for x in xs}
    assert not ids(bank) & ids(calib)


def test_bank_scores_its_own_image_zero_and_round_trips(tmp_path, backbone, knee_paths):
    record = read(knee_paths[0])
    bank = build_bank(
        backbone, [record], BankBuildConfig(anatomy="knee", coreset_ratio=1.0, calibration_fraction=0)
    )
    assert len(bank) == 196 and bank.card.n_source_images == 1 and bank.card.coreset_ratio == 1.0
    folder = bank.save(tmp_path / "banks" / "knee")
    loaded = NormalBank.load(folder)
    card = json.loads((folder / "bank.json").read_text())
    assert card["anatomy"] == "knee" and card["n_source_images"] == 1 and card["coreset_ratio"] == 1.0
    assert card["backbone_id"] and len(card["backbone_fingerprint"]) == 64
    engine = HeatmapEngine(backbone, "patchknn", loaded)
    ps = engine.patch_scores(record)
    assert ps.patch["patchknn"].max() < 1e-3  # float16 storage: ~0, not exactly 0
    result = engine.run(record)
    assert result.score < 1e-3 and result.map.max() < 1e-3
    other = engine.run(read(knee_paths[1]))
    assert other.score > 10 * max(result.score, 1e-4)
    # a coreset bank is smaller and its own image scores slightly above 0
    half = build_bank(backbone, [record], BankBuildConfig(coreset_ratio=0.5, calibration_fraction=0))
    assert len(half) == 98
    assert HeatmapEngine(backbone, "patchknn", half).run(record).score < other.score


def test_bank_save_is_atomic_and_checked(tmp_path, backbone, knee_paths):
    record = read(knee_paths[0])
    bank = build_bank(backbone, [record], BankBuildConfig(coreset_ratio=0.2, calibration_fraction=0))
    target = tmp_path / "bank"
    bank.save(target)
    bank.save(target)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]  # no temp / old folders left
    data = bytearray((target / "features.npy").read_bytes())
    data[-3] ^= 0xFF
    (target / "features.npy").write_bytes(bytes(data))
    with pytest.raises(BankError, match="checksum"):
        NormalBank.load(target)
    with pytest.raises(BankError, match="does not exist"):
        NormalBank.load(tmp_path / "missing")


def test_bank_from_another_backbone_is_refused(backbone, knee_paths):
    bank = build_bank(
        backbone, [read(knee_paths[0])], BankBuildConfig(coreset_ratio=0.2, calibration_fraction=0)
    )
    with pytest.raises(BankError, match="rebuild the bank"):
        HeatmapEngine(tiny_backbone(seed=1), "patchknn", bank)
    with pytest.raises(BankError, match="px"):
        HeatmapEngine(backbone, "patchknn", bank, HeatmapConfig(size=256))
    with pytest.raises(ValueError, match="needs a normal bank"):
        HeatmapEngine(backbone, "patchknn", None)
    with pytest.raises(ValueError, match="MAE"):
        HeatmapEngine(tiny_backbone(mae=False), "recon")
    with pytest.raises(BankError, match="calibration"):
        HeatmapEngine(backbone, "both", bank)


def test_calibrated_bank_gives_normal_units_and_both(backbone, knee_paths):
    bank = build_bank(backbone, knee_paths, BankBuildConfig(coreset_ratio=0.3, calibration_fraction=0.25))
    assert set(bank.card.calibration) == {"patchknn", "recon", "global"}
    assert bank.card.n_source_images + bank.card.calibration["recon"]["n_images"] == len(knee_paths)
    q = bank.card.calibration["patchknn"]["map_quantiles"]
    assert len(q) == 101 and q == sorted(q)
    result = HeatmapEngine(backbone, "both", bank).run(read(knee_paths[-1]))
    assert result.units == "normal" and result.threshold_kind == "calibrated" and result.threshold == 1.0
    assert set(result.maps) == {"recon", "patchknn"}
    np.testing.assert_allclose(result.map, (result.maps["recon"] + result.maps["patchknn"]) / 2, rtol=1e-6)
    assert {"recon", "patchknn", "both"} <= set(result.scores)


# -- alignment on a non-square original -------------------------------------------------------------
@pytest.mark.parametrize(
    ("orientation", "center"),
    [
        ("portrait", (400, 300)),
        ("portrait", (150, 120)),
        ("portrait", (650, 400)),
        ("landscape", (300, 400)),  # the transposed film: padding above and below instead of at the sides
        ("landscape", (420, 640)),
    ],
)
def test_lesion_lands_on_its_pixel_in_the_output_map(backbone, wrist, orientation, center):
    if orientation == "landscape":
        wrist = replace(wrist, array=np.ascontiguousarray(wrist.array.T))
    # bank from the clean image itself: only the lesion is novel, so the map is deterministic
    bank = build_bank(backbone, [wrist], BankBuildConfig(coreset_ratio=1.0, calibration_fraction=0))
    engine = HeatmapEngine(backbone, "patchknn", bank)
    image, _ = insert_intensity_defect(wrist.array, center, 20, strength=-0.5)
    result = engine.run(replace(wrist, array=image))
    assert result.map.shape == wrist.array.shape
    peak = np.unravel_index(np.argmax(result.map), result.map.shape)
    one_patch = 16 * max(wrist.array.shape) / 224  # one model patch in original pixels (~52)
    assert np.hypot(peak[0] - center[0], peak[1] - center[1]) <= one_patch
    top = result.regions[0]
    assert top.bbox_min_index[0] <= center[0] <= top.bbox_max_index[0]
    assert top.bbox_min_index[1] <= center[1] <= top.bbox_max_index[1]


def test_fast_grid_mapping_matches_the_io_inverse_transform(backbone, wrist):
    """The engine resamples canvas maps with its own crop + torch resize (speed); it must put every value
    where ``PreparedImage.to_original`` (the reference inverse) puts it. Only the outermost original
    pixels may differ: there io blends in the padding value and the engine replicates the image edge."""
    engine = HeatmapEngine(backbone, "recon", None)
    for record in (wrist, replace(wrist, array=np.ascontiguousarray(wrist.array.T))):
        prepared = engine.prepare(record)
        rng = np.random.default_rng(0)
        canvas = ndimage_smooth(rng.random((1, engine.size, engine.size)).astype(np.float32))
        fast = engine._to_record_grid(canvas, record, prepared)
        ref = prepared[0].to_original(canvas[0], order=1)
        assert fast.shape == ref.shape == record.array.shape
        edge = int(np.ceil(1 / min(prepared[0].geometry.scale)))  # half a canvas pixel, rounded up
        inner = (slice(edge, -edge), slice(edge, -edge))
        np.testing.assert_allclose(fast[inner], ref[inner], atol=1e-5)


def ndimage_smooth(x: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(x, (0, 3, 3))


def test_run_reports_stage_timings(backbone, knee_paths):
    bank = build_bank(backbone, knee_paths[:2], BankBuildConfig(coreset_ratio=1.0, calibration_fraction=0))
    result = HeatmapEngine(backbone, "patchknn", bank).run(read(knee_paths[3]))
    timings = result.info["timings_ms"]
    assert {"prepare", "forward", "search", "smooth", "to_grid", "regions"} <= set(timings)
    assert all(v >= 0 for v in timings.values()) and "recon" not in timings


# -- outputs ---------------------------------------------------------------------------------------
def test_outputs_keep_the_input_geometry_2d_slice(tmp_path, backbone, shared_data):
    volume = read(shared_data / "knee_mri_dess")
    record = volume.frame(12)  # a real 2D image with non-trivial LPS geometry
    engine = HeatmapEngine(backbone, "recon", None)
    result = engine.run(record)
    paths = save_result(result, record, tmp_path, "slice12", png=True)
    back = read(paths["map"])
    assert back.array.shape in ((1, *record.array.shape), record.array.shape)
    np.testing.assert_allclose(np.squeeze(back.array), result.map, rtol=1e-6)
    np.testing.assert_allclose(back.origin, record.origin, atol=1e-4)
    np.testing.assert_allclose(back.spacing[-2:], record.spacing, atol=1e-6)
    np.testing.assert_allclose(back.direction[:, -2:], record.direction[:, :2], atol=1e-6)
    doc = json.loads(paths["json"].read_text())
    assert doc["method"] == "recon" and doc["threshold_kind"] == "relative" and doc["spacing_known"]
    assert paths["png"].stat().st_size > 1000


def test_mri_volume_slice_wise_with_3d_geometry_and_sane_regions(tmp_path, backbone, shared_data):
    record = read(shared_data / "knee_mri_dess")
    engine = HeatmapEngine(backbone, "recon", None, HeatmapConfig(max_regions=3))
    result = engine.run(record)
    assert result.map.shape == record.array.shape and result.map.dtype == np.float32
    assert np.isfinite(result.map).all() and result.map.min() >= 0
    # smoothed along slices too: neighbouring slices are correlated
    flat = result.map.reshape(result.map.shape[0], -1)
    assert np.corrcoef(flat[10], flat[11])[0, 1] > 0.5
    paths = save_result(result, record, tmp_path, "dess", fmt="nifti")
    back = read(paths["map"])
    assert back.array.shape == record.array.shape
    np.testing.assert_allclose(back.origin, record.origin, atol=1e-3)
    np.testing.assert_allclose(back.spacing, record.spacing, atol=1e-5)
    np.testing.assert_allclose(back.direction, record.direction, atol=1e-5)
    doc = json.loads(paths["json"].read_text())
    assert 1 <= len(doc["regions"]) <= 3
    shape = np.array(record.array.shape)
    for region in doc["regions"]:
        lo, hi, peak = map(
            np.array, (region["bbox_min_index"], region["bbox_max_index"], region["peak_index"])
        )
        assert (0 <= lo).all() and (lo <= peak).all() and (peak <= hi).all() and (hi < shape).all()
        assert region["peak"] >= doc["threshold"] and region["n_pixels"] >= 1
        lps_lo, lps_hi, lps_peak = map(
            np.array, (region["bbox_min_lps"], region["bbox_max_lps"], region["peak_lps"])
        )
        assert (lps_lo <= lps_peak + 1e-6).all() and (lps_peak <= lps_hi + 1e-6).all()
        expected = np.asarray(record.origin) + record.direction @ (np.asarray(record.spacing) * peak)
        np.testing.assert_allclose(lps_peak, expected, atol=1e-4)
        np.testing.assert_allclose(region["size_mm"], (hi - lo + 1) * np.asarray(record.spacing), rtol=1e-6)
    peaks = [r["peak"] for r in doc["regions"]]
    assert peaks == sorted(peaks, reverse=True)


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_build_bank_and_heatmaps(tmp_path, knee_paths, wrist, monkeypatch):
    from orthofm.cli import main

    monkeypatch.setenv("ORTHOFM_NUM_THREADS", "1")
    from orthofm.models import save_orthofm

    model = tmp_path / "model"
    save_orthofm(tiny_backbone(), model)
    images = tmp_path / "normals"
    images.mkdir()
    for p in knee_paths:
        os.symlink(p, images / p.name)
    bank_dir = model / "banks" / "knee"
    assert (
        main(
            [
                "heatmap",
                "build-bank",
                "--backbone",
                str(model),
                "--images",
                str(images),
                "--out",
                str(bank_dir),
                "--coreset-ratio",
                "0.25",
                "--calibration-fraction",
                "0.25",
                "--group-regex",
                r"^(\d+)[LR]$",
            ]
        )
        == 0
    )
    card = json.loads((bank_dir / "bank.json").read_text())
    assert card["n_source_images"] + card["calibration"]["patchknn"]["n_images"] == len(knee_paths)
    todo = tmp_path / "todo"
    todo.mkdir()
    os.symlink(wrist.source, todo / "wrist.png")
    os.symlink(knee_paths[0], todo / "knee.png")
    out = tmp_path / "out"
    # no --normal-bank: the model folder's banks/knee is found
    assert (
        main(
            [
                "heatmap",
                "--backbone",
                str(model),
                "--images",
                str(todo),
                "--out",
                str(out),
                "--method",
                "both",
                "--png",
            ]
        )
        == 0
    )
    for stem, shape in (("wrist", (727, 494)), ("knee", (224, 224))):
        doc = json.loads((out / f"{stem}_heatmap.json").read_text())
        assert doc["method"] == "both" and doc["image_shape"] == list(shape)
        assert (out / f"{stem}_heatmap.nrrd").is_file() and (out / f"{stem}_heatmap.png").is_file()
    assert (out / "heatmap_scores.csv").read_text().count("\n") == 3
    assert main(["heatmap", "--backbone", str(model), "--out", str(out)]) == 1  # --images missing


def test_evaluation_smoke_on_the_knee_set(backbone, shared_data, knee_paths):
    from orthofm.evaluate.heatmap_eval import HeatmapEvalConfig, evaluate_heatmaps

    bank = build_bank(backbone, knee_paths, BankBuildConfig(coreset_ratio=0.5, calibration_fraction=0.25))
    engine = HeatmapEngine(backbone, "both", bank)
    config = HeatmapEvalConfig(data=shared_data / "knee_kl", max_per_grade=2, lesion_images=3, bootstrap=50)
    report = evaluate_heatmaps(engine, config)
    image = report["image_level"]
    assert image["n_images"] == 10 and image["n_per_grade"] == {0: 2, 1: 2, 2: 2, 3: 2, 4: 2}
    assert set(image["methods"]) == {"recon", "patchknn", "both_set_rank", "both_calibrated", "global"}
    for name, entry in image["methods"].items():
        assert 0 <= entry["auroc_kl0_vs_kl34"] <= 1
        # the tiny random ViT gives every knee the same CLS token: a constant global score has no rank correlation
        assert -1 <= entry["spearman_grade"] <= 1 or (name == "global" and np.isnan(entry["spearman_grade"]))
    pixel = report["pixel_level"]
    assert pixel["n_images"] == 3 and 0 < pixel["lesion_fraction"] < 0.2
    assert set(pixel["methods"]) == {"recon", "patchknn", "both"}
    for entry in pixel["methods"].values():
        assert 0 <= entry["pixel_auroc"] <= 1 and 0 <= entry["aupro"] <= 1
        assert sum(k["n"] for k in entry["per_kind"].values()) == 3
    assert [(r["grade"], r["image"]) for r in image["per_image"]][:2] == [
        (0, p.name) for p in image_paths(config)
    ][:2]
    assert report["verdict"]["default_method"] in {"recon", "patchknn", "both"}


def image_paths(config) -> list[Path]:
    from orthofm.evaluate.heatmap_eval import list_graded

    return [p for p, _ in list_graded(config.data, config.split, config.max_per_grade, config.seed)]


def test_report_folder_and_docs_block_are_regenerated_in_place(tmp_path):
    """The report is regenerated whenever the backbone changes: figures + README written, and the docs
    block between the markers replaced (twice: idempotent) without touching the text around it."""
    from orthofm.heatmaps.report import DOC_END, write_report

    rng = np.random.default_rng(0)
    grades = np.repeat(np.arange(5), 6)
    per_image = [
        {
            "image": f"{i}L.png",
            "grade": int(g),
            "recon": float(g + rng.normal()),
            "patchknn": float(rng.normal()),
        }
        for i, g in enumerate(grades)
    ]
    methods = {
        m: {
            "auroc_kl0_vs_kl34": 0.7,
            "auroc_ci95": [0.6, 0.8],
            "spearman_grade": 0.3,
            "mean_score_per_grade": {},
        }
        for m in ("recon", "patchknn")
    }
    pixel = {
        "pixel_auroc": 0.8,
        "aupro": 0.5,
        "per_kind": {"break": {"n": 1, "pixel_auroc": 0.8, "aupro": 0.5}},
    }
    report = {
        "config": {"split": "val", "lesions_per_image": 1},
        "engine": {"method": "both", "size": 224, "units": "normal", "bank": None},
        "image_level": {"n_images": 30, "n_per_grade": {}, "seconds_per_image": 1.0, "methods": methods,
                        "per_image": per_image},
        "pixel_level": {"n_images": 1, "lesion_fraction": 0.01, "seconds_per_image": 1.0,
                        "methods": {"recon": pixel, "patchknn": pixel, "both": pixel}},
        "verdict": {"default_method": "recon", "reason": "test"},
        "command": "orthofm heatmap evaluate --test",
        "backbone": "tiny",
    }  # fmt: skip
    image = rng.random((40, 60)).astype(np.float32)
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:20, 10:20] = True
    ex = {
        "name": "x.png",
        "image": image,
        "mask": mask,
        "maps": {"recon": image, "patchknn": image, "both": image},
    }
    doc = tmp_path / "heatmaps.md"
    doc.write_text(
        "# Heatmaps\n\nbefore\n\n<!-- heatmap-results:begin -->\nold numbers\n" + DOC_END + "\n\nafter\n"
    )
    out = tmp_path / "results"
    for _ in range(2):
        paths = write_report(
            report, out, real_examples=[dict(ex, grade=4)], lesion_examples={"break": ex}, update_doc=doc
        )
    for key in ("roc", "grades", "real", "lesions"):
        assert paths[key].stat().st_size > 5000, key
    assert json.loads((out / "heatmap_eval.json").read_text())["figures"]["roc"] == "roc_kl0_vs_kl34.png"
    readme = (out / "README.md").read_text()
    assert "orthofm heatmap evaluate --test" in readme and "![ROC curves](roc_kl0_vs_kl34.png)" in readme
    text = doc.read_text()
    assert text.startswith("# Heatmaps\n\nbefore\n") and text.rstrip().endswith("after")
    assert "old numbers" not in text and text.count(DOC_END) == 1 and "(results/README.md)" in text


def test_maps_use_the_fast_path_by_default_and_match_float32(shared_data: Path, monkeypatch) -> None:
    """Heatmaps run in bf16 autocast where the CPU has it (like embeddings); maps and scores stay float32's."""
    from orthofm.heads.runtime import default_model_dir, inference_dtype
    from orthofm.heatmaps import default_bank_path
    from orthofm.models import load_backbone

    model = default_model_dir()
    bb = load_backbone(model)
    bank = NormalBank.load(default_bank_path(model, "knee"))
    assert HeatmapEngine(bb, "patchknn", bank).inputs.dtype == inference_dtype()
    monkeypatch.setenv("ORTHOFM_FORCE_FP32", "1")
    assert HeatmapEngine(bb, "patchknn", bank).inputs.dtype == torch.float32
    monkeypatch.delenv("ORTHOFM_FORCE_FP32")
    with pytest.raises(ValueError, match="precision"):
        HeatmapEngine(bb, "patchknn", bank, HeatmapConfig(precision="fp8"))
    records = [read(p) for p in sorted((shared_data / "knee_kl" / "val" / "3").glob("*.png"))[:4]]
    for method in ("patchknn", "recon"):
        fast, exact = (HeatmapEngine(bb, method, bank, HeatmapConfig(precision=p)) for p in ("bf16", "fp32"))
        for record in records:
            a, b = fast.run(record), exact.run(record)
            assert not np.array_equal(a.map, b.map)  # bf16 really ran
            assert np.corrcoef(a.map.ravel(), b.map.ravel())[0, 1] > 0.999, method
            assert abs(a.score - b.score) <= 0.01 * abs(b.score), (method, a.score, b.score)


def test_bank_search_by_matrix_product_matches_faiss(monkeypatch) -> None:
    from orthofm.heatmaps import bank as bank_module
    from orthofm.heatmaps.bank import BankCard

    rng = np.random.default_rng(3)
    feats = rng.standard_normal((500, 32)).astype(np.float32)
    card = BankCard(backbone_id="t", backbone_fingerprint="f", anatomy="knee", input_size=32, dim=32,
                    n_source_images=1, n_patches_total=500, n_patches=500, coreset_ratio=1.0, projection_dim=0)
    bank = NormalBank(feats, card)
    queries = np.concatenate([feats[:7] * 3.0, rng.standard_normal((50, 32)).astype(np.float32)])
    monkeypatch.setattr(bank_module, "SEARCH_BLOCK", 16)  # several blocks
    exact = bank.max_similarity(queries)  # faiss flat index
    np.testing.assert_allclose(exact[:7], 1.0, atol=1e-5)  # a bank patch (rescaled) finds itself
    np.testing.assert_allclose(bank.max_similarity(queries, dtype=torch.float32), exact, atol=1e-5)
    np.testing.assert_allclose(bank.max_similarity(queries, dtype=torch.bfloat16), exact, atol=1e-5)
    with pytest.raises(BankError, match="do not match"):
        bank.max_similarity(queries[:, :16], dtype=torch.float32)


@pytest.mark.parametrize("shape", [(120, 90), (9, 40, 30)])
def test_regions_on_the_cropped_box_match_labelling_the_whole_map(shape) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(len(shape))
    arr = ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 2)
    arr[(slice(None),) * (len(shape) - 2) + (slice(0, 10), slice(0, 10))] = 0  # blobs away from the corner
    thr = float(np.quantile(arr, 0.97))
    got = find_regions(arr, thr, max_regions=50)
    lab, n = ndimage.label(arr >= thr, structure=np.ones((3,) * arr.ndim, dtype=bool))
    assert n > 2 and len(got) == n
    for region in got:
        i = lab[tuple(region.peak_index)]
        assert i > 0
        box = ndimage.find_objects(lab)[i - 1]
        assert region.bbox_min_index == [s.start for s in box]
        assert region.bbox_max_index == [s.stop - 1 for s in box]
        assert region.n_pixels == int((lab == i).sum())
        assert region.peak == pytest.approx(float(arr[lab == i].max()))
        assert region.mean == pytest.approx(float(arr[lab == i].mean()), rel=1e-5)
    assert [r.peak for r in got] == sorted((r.peak for r in got), reverse=True)
    assert find_regions(arr, float(arr.max()) + 1) == []


def test_global_image_score_from_the_banks_normal_images(tmp_path, backbone, knee_paths, wrist) -> None:
    """One CLS per source image is stored with the bank; an image's global score is its CLS novelty."""
    records = [read(p) for p in knee_paths]
    bank = build_bank(backbone, records[:6], BankBuildConfig(coreset_ratio=0.2, calibration_fraction=0))
    assert bank.image_features is not None and bank.image_features.shape == (6, 64)
    engine = HeatmapEngine(backbone, "patchknn", bank)
    own = engine.patch_scores(records[0]).global_score
    assert own is not None and own < bank.global_novelty(np.ones(64), k=1) + 1.0  # finite, in [0, 2]
    assert bank.global_novelty(bank.image_features[0], k=1) == pytest.approx(0.0, abs=1e-6)
    from orthofm.heads.runtime import default_model_dir
    from orthofm.models import load_backbone

    real = load_backbone(default_model_dir())  # a random tiny ViT gives every image nearly the same CLS
    real_bank = build_bank(real, records[:6], BankBuildConfig(coreset_ratio=0.2, calibration_fraction=0))
    real_engine = HeatmapEngine(real, "patchknn", real_bank)
    knee, other = real_engine.run(records[7]).scores["global"], real_engine.run(wrist).scores["global"]
    assert other > knee > 0, (other, knee)  # a wrist is further from normal knees than another knee
    folder = bank.save(tmp_path / "bank")
    loaded = NormalBank.load(folder)
    np.testing.assert_allclose(loaded.image_features, bank.image_features, atol=1e-3)  # float16 on disk
    card = json.loads((folder / "bank.json").read_text())
    assert card["n_image_features"] == 6 and len(card["image_features_sha256"]) == 64
    (folder / "images.npy").write_bytes((folder / "images.npy").read_bytes()[:-8])
    with pytest.raises(BankError, match="checksum"):
        NormalBank.load(folder)
    (folder / "images.npy").unlink()
    with pytest.raises(BankError, match="images.npy"):
        NormalBank.load(folder)
    old_style = NormalBank(bank.features, replace(bank.card, n_image_features=0))  # banks made before
    assert HeatmapEngine(backbone, "patchknn", old_style).patch_scores(records[0]).global_score is None
    calibrated = build_bank(backbone, records, BankBuildConfig(coreset_ratio=0.2, calibration_fraction=0.25))
    entry = calibrated.card.calibration["global"]
    assert entry["n_images"] == 2 and entry["image_scores"] == sorted(entry["image_scores"])
    result = HeatmapEngine(backbone, "patchknn", calibrated).run(wrist)
    assert 0.0 <= result.scores["global_normal_rank"] <= 1.0 and "global" in result.to_json()["scores"]
