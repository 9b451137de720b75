"""OrthoFM's own format: card contents, MAE decoder, atomic writes, updating a model folder in place."""

from __future__ import annotations

import json

import pytest
import torch

from orthofm.models import (
    BackboneConfig,
    MAEDecoderConfig,
    WeightFormatError,
    backbone_from_config,
    load_backbone,
    read_model_card,
    save_orthofm,
)
from orthofm.models.families import tiny_config


def _eva_with_decoder():
    cfg = tiny_config("dinov3")
    cfg = BackboneConfig.from_dict(cfg.to_dict() | {
        "mae_decoder": {"dim": 16, "depth": 1, "num_heads": 2, "out_chans": 1, "mask_ratio": 0.75}})
    bb = backbone_from_config(cfg).eval()
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return bb


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_eva_mae_decoder_round_trip(tmp_path, dtype):
    bb = _eva_with_decoder()
    assert isinstance(bb.config.mae_decoder, MAEDecoderConfig)
    folder = save_orthofm(bb, tmp_path / "m", {"recipe": {"objective": "mae"}}, dtype=dtype)
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.safetensors", "mae_decoder.safetensors",
                                                        "model_card.json"]
    back = load_backbone(folder)
    assert back.has_mae_decoder
    x, noise = torch.randn(2, 3, 32, 48), torch.rand(2, 6)
    with torch.no_grad():
        pred_a, mask_a = bb.mae_reconstruct(x, noise)
        pred_b, mask_b = back.mae_reconstruct(x, noise)
    assert torch.equal(mask_a, mask_b)
    if dtype == torch.float32:
        assert torch.equal(pred_a, pred_b)
    else:
        torch.testing.assert_close(pred_b, pred_a, atol=2e-2, rtol=2e-2)


def test_card_contents(tmp_path):
    bb = backbone_from_config(tiny_config("dinov3"))
    sections = {"data": {"images": 123, "sources": ["OAI"]}, "recipe": {"epochs": 1},
                "compute": {"cpu_hours": 0.1}, "metrics": {"knn_top1": 0.42}}
    folder = save_orthofm(bb, tmp_path / "m", sections)
    card = read_model_card(folder)
    assert card["format"] == "orthofm" and card["format_version"] == 1
    assert BackboneConfig.from_dict(card["backbone"]) == bb.config
    n = sum(p.numel() for p in bb.parameters())
    assert card["num_params"] == {"total": n, "backbone": n, "mae_decoder": 0}
    assert card["dtype"] == "float16"
    for key, value in sections.items():
        assert card[key] == value
    assert set(card["files"]) == {"backbone.safetensors"}
    assert len(card["files"]["backbone.safetensors"]["sha256"]) == 64
    assert card["software"]["timm"]


def test_fp16_file_is_smaller_and_keeps_vectors_fp32(tmp_path):
    from safetensors import safe_open

    bb = backbone_from_config(tiny_config("dinov3"))
    f16 = save_orthofm(bb, tmp_path / "a", dtype=torch.float16) / "backbone.safetensors"
    f32 = save_orthofm(bb, tmp_path / "b", dtype=torch.float32) / "backbone.safetensors"
    assert f16.stat().st_size < 0.7 * f32.stat().st_size
    with safe_open(str(f16), "pt") as fh:
        dtypes = {k: fh.get_slice(k).get_dtype() for k in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert dtypes["model.blocks.0.attn.qkv.weight"] == "F16"
    assert dtypes["model.blocks.0.gamma_1"] == "F32"  # layer-scale ~1e-5 would lose precision in fp16


def test_reserved_card_sections_are_rejected(tmp_path):
    bb = backbone_from_config(tiny_config("dinov3"))
    with pytest.raises(ValueError, match="written by save_orthofm"):
        save_orthofm(bb, tmp_path / "m", {"backbone": "mine"})


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="refusing"):
        save_orthofm(backbone_from_config(tiny_config("dinov3")), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]


def test_update_in_place_keeps_heads_and_banks_and_drops_stale_decoder(tmp_path):
    folder = save_orthofm(_eva_with_decoder(), tmp_path / "orthofm_vits16")
    (folder / "heads" / "kl_grade").mkdir(parents=True)
    (folder / "heads" / "kl_grade" / "head.json").write_text("{}")
    (folder / "banks").mkdir()
    plain = backbone_from_config(tiny_config("dinov3"))
    save_orthofm(plain, folder, {"metrics": {"v": 2}})
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["backbone.safetensors", "banks", "heads", "model_card.json"]
    assert (folder / "heads" / "kl_grade" / "head.json").is_file()
    back = load_backbone(folder)
    assert not back.has_mae_decoder and back.model_card["metrics"] == {"v": 2}
    assert not list(tmp_path.glob(".*tmp*"))  # no temp folders left behind


def test_failed_write_leaves_no_trace(tmp_path, monkeypatch):
    import orthofm.models.orthofm_format as fmt

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fmt, "_commit", boom)
    with pytest.raises(OSError, match="disk full"):
        save_orthofm(backbone_from_config(tiny_config("dinov3")), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_backbone_file_path_loads_its_folder(tmp_path):
    bb = backbone_from_config(tiny_config("timm_dinov2"))
    folder = save_orthofm(bb, tmp_path / "m", dtype=torch.float32)
    back = load_backbone(folder / "backbone.safetensors")
    assert back.weights_info.format == "orthofm"


def test_preprocess_travels_with_the_weights(shared_weights, tmp_path):
    bb = load_backbone(shared_weights / "skelex_hf_vitmae_format")
    folder = save_orthofm(bb, tmp_path / "skelex", {"source": {"note": "test"}})
    back = load_backbone(folder)
    assert back.preprocess == bb.preprocess
    assert back.pretrained_cfg.name == "skelex"  # licence and source stay attached after conversion
    assert "CC-BY-NC-ND" in back.pretrained_cfg.license


def test_missing_decoder_file(tmp_path):
    folder = save_orthofm(_eva_with_decoder(), tmp_path / "m")
    (folder / "mae_decoder.safetensors").unlink()
    with pytest.raises(WeightFormatError, match="mae_decoder.safetensors but the file is missing"):
        load_backbone(folder)


def test_card_that_is_not_orthofm(tmp_path):
    (tmp_path / "model_card.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(WeightFormatError, match="expected 'orthofm'"):
        read_model_card(tmp_path)
