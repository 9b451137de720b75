"""Weight import reproduces the outputs that the formats' own reference implementations computed.

The fixtures in ``../shared/fixtures/weights`` were made by Meta's DINOv3 code and by transformers, not
by this project, so agreement within 1e-5 means the conversion is right, not merely self-consistent.
"""

from __future__ import annotations

import copy

import pytest
import torch

from orthofm.models import HFMAEBackbone, load_backbone
from orthofm.models.checkpoint import read_tensors

DINOV3_FILES = [
    "dinov3_official_format.pth",
    "orthofoundation_backbone_format.pth",
    "orthofoundation_ddp_wrapper_format.pth",
]
TOL = 1e-5


@pytest.fixture(scope="module")
def dinov3_reference(shared_weights):
    return torch.load(shared_weights / "dinov3_reference_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def skelex_reference(shared_weights):
    return torch.load(shared_weights / "skelex_reference_outputs.pt", weights_only=True)


def _assert_dinov3(bb, ref) -> None:
    x = ref["input"]
    assert x.shape[-2:] == (64, 96)  # non-square: 4 x 6 patches
    with torch.no_grad():
        out = bb.forward_features(x)
    assert out["cls"].shape == (2, 96)
    assert out["registers"].shape == (2, 4, 96)
    assert out["patches"].shape == (2, 4, 6, 96)
    torch.testing.assert_close(out["cls"], ref["x_norm_clstoken"], atol=TOL, rtol=0)
    torch.testing.assert_close(out["registers"], ref["x_storage_tokens"], atol=TOL, rtol=0)
    torch.testing.assert_close(out["patches"].flatten(1, 2), ref["x_norm_patchtokens"], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", DINOV3_FILES)
def test_dinov3_formats_reproduce_reference(shared_weights, dinov3_reference, name):
    bb = load_backbone(shared_weights / name)
    assert bb.arch == "vit_small_patch16_dinov3_qkvb"
    assert bb.config.model_kwargs == {"embed_dim": 96, "depth": 2, "num_heads": 2}
    assert bb.num_registers == 4 and bb.patch_size == 16
    assert tuple(bb.preprocess.mean) == (0.485, 0.456, 0.406)  # ImageNet, as DINOv3 LVD / OrthoFoundation
    _assert_dinov3(bb, dinov3_reference)


def test_orthofoundation_layouts_are_recognised(shared_weights):
    plain = load_backbone(shared_weights / "dinov3_official_format.pth")
    wrapped = load_backbone(shared_weights / "orthofoundation_ddp_wrapper_format.pth")
    assert plain.pretrained_cfg.name == "dinov3_lvd1689m"
    assert wrapped.pretrained_cfg.name == "orthofoundation"
    notes = " ".join(wrapped.weights_info.notes)
    assert "module.backbone.backbone." in notes and "module.head.mlp.0.weight" in notes


@pytest.mark.parametrize("wrapper", ["teacher", "model", "state_dict"])
def test_dinov3_inside_training_checkpoint_dicts(shared_weights, dinov3_reference, tmp_path, wrapper):
    """DINOv3-style training checkpoints: {'teacher': {'backbone.*', 'dino_head.*'}, 'student': ...}."""
    sd = read_tensors(shared_weights / "dinov3_official_format.pth")
    bogus_student = {f"backbone.{k}": torch.zeros_like(v) for k, v in sd.items()}
    inner = {f"backbone.{k}": v for k, v in sd.items()} | {"dino_head.mlp.0.weight": torch.randn(8, 96)}
    ckpt = {wrapper: inner, "student": bogus_student, "iteration": 1000, "optimizer": {"lr": 0.1}}
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(ckpt, path)
    bb = load_backbone(path)
    _assert_dinov3(bb, dinov3_reference)


def test_dinov3_teacher_and_student_prefixes_in_one_flat_dict(shared_weights, dinov3_reference, tmp_path):
    sd = read_tensors(shared_weights / "dinov3_official_format.pth")
    flat = {f"student.backbone.{k}": torch.zeros_like(v) for k, v in sd.items()}
    flat |= {f"teacher.backbone.{k}": v for k, v in sd.items()}
    path = tmp_path / "flat.pth"
    torch.save(flat, path)
    _assert_dinov3(load_backbone(path), dinov3_reference)


def test_dinov3_as_safetensors(shared_weights, dinov3_reference, tmp_path):
    from safetensors.torch import save_file

    sd = read_tensors(shared_weights / "orthofoundation_backbone_format.pth")
    path = tmp_path / "orthofoundation.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    _assert_dinov3(load_backbone(path), dinov3_reference)


def test_skelex_reproduces_reference_logits_and_mask(shared_weights, skelex_reference):
    bb = load_backbone(shared_weights / "skelex_hf_vitmae_format")
    assert isinstance(bb, HFMAEBackbone) and bb.has_mae_decoder
    with torch.no_grad():
        logits, mask = bb.mae_reconstruct(skelex_reference["pixel_values"], skelex_reference["noise"])
    assert logits.shape == (1, 16, 768) and mask.shape == (1, 16)
    torch.testing.assert_close(logits, skelex_reference["logits"], atol=TOL, rtol=0)
    torch.testing.assert_close(mask, skelex_reference["mask"], atol=0, rtol=0)
    assert mask.sum() == 12  # mask ratio 0.75 of 16 patches


def test_skelex_features_equal_hf_encoder_without_masking(shared_weights, skelex_reference):
    """forward_features = HF ViTMAEModel with nothing masked (mask_ratio 0, identity shuffle)."""
    bb = load_backbone(shared_weights / "skelex_hf_vitmae_format")
    x = skelex_reference["pixel_values"]
    reference = copy.deepcopy(bb.model)
    reference.config.mask_ratio = 0.0
    with torch.no_grad():
        ours = bb.forward_features(x)
        hf = reference(pixel_values=x, noise=torch.arange(16.0).unsqueeze(0)).last_hidden_state
    assert ours["registers"].shape == (1, 0, 64)
    assert ours["patches"].shape == (1, 4, 4, 64)
    torch.testing.assert_close(ours["cls"], hf[:, 0], atol=TOL, rtol=0)
    torch.testing.assert_close(ours["patches"].flatten(1, 2), hf[:, 1:], atol=TOL, rtol=0)


def test_skelex_other_input_sizes(shared_weights):
    """Non-native sizes go through HF's interpolate_pos_encoding for features and reconstruction."""
    bb = load_backbone(shared_weights / "skelex_hf_vitmae_format")
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        feats = bb.forward_features(x)
        logits, mask = bb.mae_reconstruct(x, torch.rand(2, 24))
    assert feats["patches"].shape == (2, 6, 4, 64)
    assert logits.shape == (2, 24, 768) and mask.shape == (2, 24)
    assert int(mask.sum()) == 2 * 18
    assert torch.isfinite(logits).all()
