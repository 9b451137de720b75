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
