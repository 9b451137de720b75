"""The backbone probe behind the default model's card: runs end to end on real radiographs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from orthofm.evaluate.backbone_probe import pixel_features


def _subset(shared_data: Path, tmp_path: Path, split: str, n: int) -> Path:
    root = tmp_path / split
    for grade in ("0", "4"):
        (root / grade).mkdir(parents=True)
        for f in sorted((shared_data / "knee_kl" / split / grade).glob("*.png"))[:n]:
            (root / grade / f.name).symlink_to(f)
    return root


def test_pixel_features_are_scaled_thumbnails(shared_data: Path) -> None:
    files = sorted((shared_data / "knee_kl" / "val" / "0").glob("*.png"))[:2]
    x = pixel_features(files, size=16)
    assert x.shape == (2, 256)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05


def test_probe_backbone_cli_reports_backbone_and_baselines(shared_data: Path, shared_weights: Path,
                                                           tmp_path: Path) -> None:
    train = _subset(shared_data, tmp_path, "train", 12)
    val = _subset(shared_data, tmp_path, "val", 6)
    out = tmp_path / "probe.json"
    cmd = [sys.executable, "-m", "orthofm.cli", "probe-backbone",
           "--weights", str(shared_weights / "dinov3_official_format.pth"), "--train", str(train),
           "--val", str(val), "--cache", str(tmp_path / "cache"), "--out", str(out)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["name"].split(":")[0] for r in results] == ["backbone", "random_init", "pixels64"]
    for r in results:
        assert r["metrics"]["n"] == 12
        assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
    # KL 0 vs KL 4 is visible in raw pixels: the pixel baseline must do clearly better than chance
    assert results[2]["metrics"]["accuracy"] > 0.6
    assert np.isfinite(results[0]["metrics"]["nll"])


def test_readouts_parse_and_name_their_mistakes() -> None:
    import pytest

    from orthofm.evaluate.backbone_probe import Readout

    assert Readout.parse("cls+mean") == Readout("cls+mean", None, 1, 0)
    assert Readout.parse("cls4+mean") == Readout("cls4+mean", None, 4, 0)
    assert Readout.parse("block7:cls+grid4") == Readout("block7:cls+grid4", 7, 1, 4)
    for bad in ("cls", "cls+grid0", "blockx:cls+mean", "block3:", "mean"):
        with pytest.raises(ValueError, match="readout"):
            Readout.parse(bad)


def test_readout_features_agree_with_the_product_feature(shared_data: Path) -> None:
    """cls+mean is the product's feature; a 1x1 grid is the mean; block<last>: is the default block."""
    import pytest
    import torch

    from orthofm.evaluate.backbone_probe import Readout, readout_features
    from orthofm.heads.embeddings import read_pixels
    from orthofm.heads.features import pool_tokens
    from orthofm.heads.runtime import autocast, inference_dtype
    from orthofm.io import prepare_2d
    from orthofm.models import PreprocessConfig, create_backbone

    torch.manual_seed(0)
    bb = create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=32, preprocess=PreprocessConfig(input_size=32)).eval()
    depth = len(bb.model.blocks)
    files = sorted((shared_data / "knee_kl" / "val" / "2").glob("*.png"))[:3]
    names = ["cls+mean", "cls+grid1", f"block{depth - 1}:cls+mean", "cls4+mean", "cls+grid2", "block1:cls+mean"]
    feats = readout_features(bb, files, [Readout.parse(n) for n in names], batch_size=2)
    pre = bb.preprocess
    x = torch.stack([torch.as_tensor(prepare_2d(read_pixels(f).array, size=32, mean=pre.mean, std=pre.std).tensor)
                     for f in files])
    with torch.inference_mode(), autocast(inference_dtype()):
        ref = pool_tokens(bb.forward_features(x)).numpy()
        inter = bb.forward_intermediates(x, [1, depth - 4])
    np.testing.assert_allclose(feats["cls+mean"], ref, atol=1e-5)
    np.testing.assert_allclose(feats["cls+grid1"], ref, atol=1e-5)
    np.testing.assert_allclose(feats[f"block{depth - 1}:cls+mean"], ref, atol=1e-5)
    d = bb.embed_dim
    assert feats["cls4+mean"].shape == (3, 5 * d) and feats["cls+grid2"].shape == (3, 5 * d)
    np.testing.assert_allclose(feats["cls4+mean"][:, :d], inter[1]["cls"].float().numpy(), atol=1e-5)
    np.testing.assert_allclose(feats["cls4+mean"][:, -d:], ref[:, d:], atol=1e-5)
    np.testing.assert_allclose(feats["block1:cls+mean"][:, :d], inter[0]["cls"].float().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="blocks"):
        readout_features(bb, files, [Readout.parse(f"block{depth}:cls+mean")])


def test_probe_backbone_cli_compares_readouts_for_the_backbone_and_its_random_twin(
        shared_data: Path, shared_weights: Path, tmp_path: Path) -> None:
    train = _subset(shared_data, tmp_path, "train", 10)
    val = _subset(shared_data, tmp_path, "val", 5)
    out = tmp_path / "probe.json"
    cmd = [sys.executable, "-m", "orthofm.cli", "probe-backbone",
           "--weights", str(shared_weights / "dinov3_official_format.pth"), "--train", str(train),
           "--val", str(val), "--baselines", "random_init", "--readouts", "cls+mean,cls+grid2",
           "--input-size", "64", "--out", str(out)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [(r["name"].split(":")[0], r["features"]) for r in results] == [
        ("backbone", "cls+mean@64px"), ("backbone", "cls+grid2@64px"),
        ("random_init", "cls+mean@64px"), ("random_init", "cls+grid2@64px")]
    assert all(r["metrics"]["n"] == 10 for r in results)
    bad = subprocess.run([*cmd[:-2], "--readouts", "cls+grid0"], check=False, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "unknown readout 'cls+grid0'" in bad.stdout
