"""``orthofm weights inspect|convert`` as a user runs them: a real subprocess of the console entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from orthofm.models import load_backbone


def _orthofm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", ORTHOFM_LOG_LEVEL="WARNING")
    return subprocess.run([sys.executable, "-m", "orthofm.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_inspect_dinov3_ddp_wrapper(shared_weights):
    res = _orthofm("weights", "inspect", str(shared_weights / "orthofoundation_ddp_wrapper_format.pth"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "DINOv3 official state dict" in out
    assert "vit_small_patch16_dinov3_qkvb(embed_dim=96, depth=2, num_heads=2)" in out
    assert "298,368 backbone" in out  # sum of the file's backbone tensors (checked below)
    assert "module.head.mlp.0.weight" in out and "OrthoFoundation" in out
    bb = load_backbone(shared_weights / "orthofoundation_ddp_wrapper_format.pth")
    assert sum(p.numel() for p in bb.parameters()) == 298_368


def test_convert_then_inspect_json(shared_weights, tmp_path):
    out_dir = tmp_path / "skelex_orthofm"
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"data": {"note": "SKELEX format fixture"}}))
    res = _orthofm("weights", "convert", str(shared_weights / "skelex_hf_vitmae_format"), str(out_dir),
                   "--dtype", "fp32", "--card", str(card))
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and (out_dir / "mae_decoder.safetensors").is_file()
    res = _orthofm("weights", "inspect", str(out_dir), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["format"] == "orthofm" and report["loads"] is True
    assert report["has_mae_decoder"] is True
    assert report["model_card"]["data"] == {"note": "SKELEX format fixture"}
    assert report["model_card"]["dtype"] == "float32"
    # the converted folder still reproduces the reference reconstruction
    ref = torch.load(shared_weights / "skelex_reference_outputs.pt", weights_only=True)
    with torch.no_grad():
        logits, _ = load_backbone(out_dir).mae_reconstruct(ref["pixel_values"], ref["noise"])
    torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=0)


def test_inspect_bad_file_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    res = _orthofm("weights", "inspect", str(bad))
    assert res.returncode == 1
    assert "truncated or corrupt" in res.stderr
    assert "Traceback" not in res.stderr
