"""Reconstruction-error maps: complementary masks, full coverage, and agreement with a direct computation
(SKELEX's pixel-space recipe) for OrthoFM's own MAE decoder and the Hugging Face ViTMAE (SKELEX) format."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import timm
import torch

from orthofm.heatmaps import complementary_noise, lattice_partition, passes_for_ratio, reconstruction_error
from orthofm.heatmaps.recon import ReconConfig, backbone_mask_ratio
from orthofm.io import prepare_2d, read_image
from orthofm.models import BackboneConfig, EvaBackbone, MAEDecoderConfig, PreprocessConfig
from orthofm.models.mae_decoder import unpatchify


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_mae_backbone(mask_ratio: float = 0.75) -> EvaBackbone:
    torch.manual_seed(0)
    cfg = BackboneConfig(
        arch="vit_small_patch16_dinov3_qkvb",
        preprocess=PreprocessConfig(mean=(0.5,) * 3, std=(0.25,) * 3),
        mae_decoder=MAEDecoderConfig(dim=32, depth=1, num_heads=2, mask_ratio=mask_ratio),
    )
    model = timm.create_model(
        cfg.arch,
        pretrained=False,
        num_classes=0,
        global_pool="token",
        img_size=224,
        embed_dim=64,
        depth=2,
        num_heads=2,
    )
    return EvaBackbone(cfg, model=model).eval()


@pytest.fixture(scope="module")
def knee_tensor(shared_data: Path) -> torch.Tensor:
    path = min((shared_data / "knee_kl" / "val" / "3").glob("*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = read_image(path)
    return prepare_2d(record.array, 224, mean=(0.5,) * 3, std=(0.25,) * 3).tensor[None]


def test_lattice_partitions_the_grid():
    ids = lattice_partition((14, 14), 4)
    assert sorted(torch.bincount(ids).tolist()) == [49, 49, 49, 49]
    grid = ids.reshape(14, 14)
    assert grid[0, 0] != grid[0, 1] and grid[0, 0] != grid[1, 0] and grid[0, 0] == grid[2, 2]
    assert set(lattice_partition((5, 7), 3).tolist()) == {0, 1, 2}
    noise = complementary_noise((14, 14), 4, seed=1)
    visible = torch.argsort(noise, dim=1)[:, :49]  # what an MAE keeps (lowest noise)
    assert torch.equal(torch.sort(visible.flatten()).values, torch.arange(196))
    assert passes_for_ratio(0.75) == 4 and passes_for_ratio(0.5) == 2
    with pytest.raises(ValueError):
        passes_for_ratio(1.0)


def _direct_error(bb, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """SKELEX's recipe in pixel space: unpatchify, de-normalise, masked squared error, divide by hits."""
    p = bb.patch_size
    grid = (x.shape[-2] // p, x.shape[-1] // p)
    mean = torch.tensor(bb.preprocess.mean)[:, None, None]
    std = torch.tensor(bb.preprocess.std)[:, None, None]
    err = torch.zeros(x.shape[-2:])
    hits = torch.zeros(x.shape[-2:])
    with torch.no_grad():
        for k in range(noise.shape[0]):
            pred, mask = bb.mae_reconstruct(x, noise[k : k + 1])
            c = pred.shape[-1] // (p * p)
            rec = unpatchify(pred, p, grid, c)[0] * std[:c] + mean[:c]
            img = x[0, :c] * std[:c] + mean[:c]
            m = mask.reshape(1, 1, *grid).float()
            m = torch.nn.functional.interpolate(m, scale_factor=p, mode="nearest")[0, 0]
            err += ((rec - img) ** 2).mean(dim=0) * m
            hits += m
    return err / hits.clamp_min(1), hits


def test_orthofm_decoder_full_coverage_matches_direct_computation(knee_tensor):
    bb = tiny_mae_backbone()
    maps = reconstruction_error(bb, knee_tensor)
    assert maps.pixel.shape == (1, 224, 224) and maps.patch.shape == (1, 14, 14)
    assert torch.all(maps.count == 3)  # 4 complementary passes: every patch masked in 3 of them
    direct, hits = _direct_error(bb, knee_tensor, complementary_noise((14, 14), 4, seed=0))
    assert torch.all(hits == 3)
    torch.testing.assert_close(maps.pixel[0], direct, rtol=1e-4, atol=1e-7)
    assert float(maps.pixel.min()) >= 0 and float(maps.pixel.max()) > 0
    again = reconstruction_error(bb, knee_tensor)
    assert torch.equal(again.pixel, maps.pixel)  # deterministic masks: reproducible map


def test_batching_does_not_change_the_map(knee_tensor):
    bb = tiny_mae_backbone()
    two = torch.cat([knee_tensor, knee_tensor.flip(-1)])
    a = reconstruction_error(bb, two, ReconConfig(batch_size=1))
    b = reconstruction_error(bb, two, ReconConfig(batch_size=8))
    torch.testing.assert_close(a.pixel, b.pixel, rtol=1e-4, atol=1e-6)
    single = reconstruction_error(bb, knee_tensor.flip(-1))
    torch.testing.assert_close(a.pixel[1], single.pixel[0], rtol=1e-4, atol=1e-6)


def test_other_mask_ratio_and_odd_grid_still_fully_covered(knee_tensor):
    bb = tiny_mae_backbone(mask_ratio=0.5)
    assert backbone_mask_ratio(bb) == 0.5
    x = torch.nn.functional.interpolate(knee_tensor, size=(240, 208))  # 15 x 13 patches
    maps = reconstruction_error(bb, x)
    assert maps.patch.shape == (1, 15, 13)
    assert torch.all(maps.count >= 1)


def test_skelex_hf_vitmae_format(shared_weights: Path, shared_data: Path):
    from orthofm.models.hf import load_hf_folder

    bb = load_hf_folder(shared_weights / "skelex_hf_vitmae_format")
    assert bb.has_mae_decoder and backbone_mask_ratio(bb) == 0.75
    ref = torch.load(shared_weights / "skelex_reference_outputs.pt")
    x = ref["pixel_values"]  # (1, 3, 64, 64): a 4 x 4 grid
    maps = reconstruction_error(bb, x)
    assert torch.all(maps.count == 3)
    direct, _ = _direct_error(bb, x, complementary_noise((4, 4), 4, seed=0))
    torch.testing.assert_close(maps.pixel[0], direct, rtol=1e-4, atol=1e-7)
    # the wrapped model's own output for the reference mask is what the map is built from
    pred, _ = bb.mae_reconstruct(x, ref["noise"])
    torch.testing.assert_close(pred, ref["logits"], rtol=1e-4, atol=1e-5)


def test_rejects_bad_input():
    bb = tiny_mae_backbone()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        reconstruction_error(bb, torch.zeros(1, 3, 100, 100))
    with pytest.raises(ValueError, match="B, C, H, W"):
        reconstruction_error(bb, torch.zeros(3, 224, 224))
