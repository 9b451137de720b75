"""Every registered backbone family (tiny configs): shapes, intermediates, native-format import against the
family's own library, and the OrthoFM round trip. A newly registered family is covered automatically."""

from __future__ import annotations

import json

import pytest
import torch

from orthofm.models import (
    FAMILIES,
    HFMAEBackbone,
    backbone_from_config,
    describe_arch,
    load_backbone,
    save_orthofm,
)
from orthofm.models.families import tiny_config

torch.manual_seed(0)
NAMES = sorted(FAMILIES)


def _input(bb, batch: int = 2) -> torch.Tensor:
    p = bb.patch_size
    return torch.randn(batch, 3, 2 * p, 3 * p, generator=torch.Generator().manual_seed(1))  # non-square


def _randomise(module: torch.nn.Module) -> None:
    """Make every parameter non-trivial (layer-scale 1e-5 or zero biases would hide conversion bugs)."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 else 0.0) * 0.1)


@pytest.fixture(params=NAMES)
def family(request):
    return request.param


def _built(name: str):
    bb = backbone_from_config(tiny_config(name))
    _randomise(bb)
    return bb.eval()


def test_forward_features_shapes(family):
    bb = _built(family)
    x = _input(bb)
    with torch.no_grad():
        out = bb.forward_features(x)
    d = bb.embed_dim
    assert out["cls"].shape == (2, d)
    assert out["registers"].shape == (2, bb.num_registers, d)
    assert out["patches"].shape == (2, 2, 3, d)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert bb.preprocess.input_size > 0 and len(bb.preprocess.mean) == 3


def test_input_not_multiple_of_patch_is_rejected(family):
    bb = _built(family)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        bb.forward_features(torch.randn(1, 3, bb.patch_size * 2 + 1, bb.patch_size * 2))


def test_forward_intermediates(family):
    bb = _built(family)
    x = _input(bb)
    with torch.no_grad():
        last = bb.forward_features(x)
        inter = bb.forward_intermediates(x, layers=2)
        first = bb.forward_intermediates(x, layers=[0])
    assert len(inter) == 2 and len(first) == 1
    for key in ("cls", "registers", "patches"):
        torch.testing.assert_close(inter[-1][key], last[key], atol=1e-5, rtol=1e-5)
        assert first[0][key].shape == last[key].shape
    torch.testing.assert_close(first[0]["patches"], inter[0]["patches"], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(inter[0]["patches"], inter[1]["patches"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_orthofm_round_trip(family, dtype, tmp_path):
    bb = _built(family)
    card = {"data": {"images": 0}, "recipe": {"note": "random"}, "compute": {}, "metrics": {"knn": 0.5}}
    folder = save_orthofm(bb, tmp_path / "model", card, dtype=dtype)
    back = load_backbone(folder)
    assert type(back) is type(bb)
    assert back.config.to_dict() == bb.config.to_dict()
    assert back.model_card["metrics"] == {"knn": 0.5}
    assert back.model_card["num_params"]["total"] == sum(p.numel() for p in bb.parameters())
    x = _input(bb)
    with torch.no_grad():
        a, b = bb.forward_features(x), back.forward_features(x)
    for key in a:
        if dtype == torch.float32:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(b[key], a[key], atol=3e-2, rtol=3e-2)
    if dtype == torch.float32:
        for (name, p), q in zip(bb.state_dict().items(), back.state_dict().values(), strict=True):
            assert torch.equal(p, q), name


# -- each family's native format, produced and evaluated by the family's own library ------------------

def _timm_native(name, tmp_path):
    """timm state dict (timm's own layout) -> compared with timm's own forward_features."""
    from safetensors.torch import save_file

    bb = _built(name)
    path = tmp_path / "timm_weights.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(path))
    # timm files carry no head count in their shapes: the hub's config.json (architecture + args) does
    args = {k: v for k, v in bb.config.model_kwargs.items()}
    (tmp_path / "config.json").write_text(json.dumps({"architecture": bb.arch, "model_args": args}))

    def reference(x):
        tokens = bb.model.forward_features(x)
        p = bb.num_registers + 1
        return {"cls": tokens[:, 0], "registers": tokens[:, 1:p], "patches": tokens[:, p:]}

    return path, reference, bb


def _hf_native(name, tmp_path):
    """HF ``save_pretrained`` folder -> compared with the transformers model's own outputs."""
    import transformers

    from orthofm.models.hf import ARCH_TO_FAMILY, hf_config_from_dict

    cfg = tiny_config(name)
    fam = ARCH_TO_FAMILY[cfg.arch]
    hf_cfg = hf_config_from_dict(cfg.model_kwargs["hf_config"])
    cls_name = "ViTMAEForPreTraining" if fam.model_type == "vit_mae" else fam.model_class
    model = getattr(transformers, cls_name)(hf_cfg)
    _randomise(model)
    model.eval()
    folder = tmp_path / f"{name}_hf"
    model.save_pretrained(folder)
    regs = int(getattr(hf_cfg, "num_register_tokens", 0) or 0)

    def reference(x):
        if fam.model_type == "vit_mae":
            enc = model.vit
            saved = enc.config.mask_ratio
            enc.config.mask_ratio = 0.0
            try:
                noise = torch.arange(x.shape[-2] * x.shape[-1] // 256, dtype=torch.float32).expand(x.shape[0], -1)
                interp = tuple(x.shape[-2:]) != (hf_cfg.image_size, hf_cfg.image_size)
                tokens = enc(pixel_values=x, noise=noise, interpolate_pos_encoding=interp).last_hidden_state
            finally:
                enc.config.mask_ratio = saved
        else:
            tokens = model(pixel_values=x).last_hidden_state
        p = 1 + regs
        return {"cls": tokens[:, 0], "registers": tokens[:, 1:p], "patches": tokens[:, p:]}

    return folder, reference, model


@pytest.mark.parametrize("name", NAMES)
def test_native_format_matches_its_library(name, tmp_path):
    maker = _hf_native if name.startswith("hf_") else _timm_native
    path, reference, _ = maker(name, tmp_path)
    bb = load_backbone(path)
    p = bb.patch_size
    x = torch.randn(2, 3, 2 * p, 3 * p)
    with torch.no_grad():
        ours, ref = bb.forward_features(x), reference(x)
    torch.testing.assert_close(ours["cls"], ref["cls"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["registers"], ref["registers"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["patches"].flatten(1, 2), ref["patches"], atol=1e-5, rtol=1e-5)
    assert bb.weights_info.format == ("hf" if name.startswith("hf_") else
                                      "timm_eva" if name.startswith("dinov3") else "timm_vit")


def test_hf_mae_reconstruction_equals_transformers(tmp_path):
    folder, _, model = _hf_native("hf_vit_mae", tmp_path)
    bb = load_backbone(folder)
    assert isinstance(bb, HFMAEBackbone) and bb.has_mae_decoder
    x = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 4)
    with torch.no_grad():
        ref = model(pixel_values=x, noise=noise)
        logits, mask = bb.mae_reconstruct(x, noise)
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(mask, ref.mask)


def test_hf_mae_encoder_only_folder(tmp_path):
    from transformers import ViTMAEModel

    from orthofm.models.hf import hf_config_from_dict

    cfg = hf_config_from_dict(tiny_config("hf_vit_mae").model_kwargs["hf_config"])
    ViTMAEModel(cfg).save_pretrained(tmp_path / "enc")
    bb = load_backbone(tmp_path / "enc")
    assert not bb.has_mae_decoder
    with pytest.raises(NotImplementedError, match="no MAE decoder"):
        bb.mae_reconstruct(torch.randn(1, 3, 32, 32))


def test_hf_preprocessor_config_sets_normalisation(tmp_path):
    folder, _, _ = _hf_native("hf_dinov2", tmp_path)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "do_normalize": True,
        "image_mean": [0.5307, 0.5307, 0.5307], "image_std": [0.2583, 0.2583, 0.2583],
        "do_center_crop": True, "crop_size": {"height": 518, "width": 518}, "size": {"shortest_edge": 518},
    }))
    bb = load_backbone(folder)
    assert bb.preprocess.mean == (0.5307, 0.5307, 0.5307)
    assert bb.preprocess.std == (0.2583, 0.2583, 0.2583)
    assert bb.preprocess.input_size == 518


# -- DINOv2 official layout (timm's converter) and architecture inference ------------------------------

def _official_dinov2(timm_sd: dict, registers: bool) -> dict:
    """Meta's DINOv2 layout from a timm state dict (inverse of timm's _convert_dinov2)."""
    sd = dict(timm_sd)
    d = sd["cls_token"].shape[-1]
    sd["mask_token"] = torch.zeros(1, d)
    if registers:
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([torch.zeros(1, 1, d), sd["pos_embed"]], dim=1)
    return sd


@pytest.mark.parametrize("name", ["timm_dinov2", "timm_dinov2_reg"])
def test_official_dinov2_layout(name, tmp_path):
    bb = _built(name)
    path = tmp_path / "dinov2_official.pth"
    torch.save(_official_dinov2(bb.model.state_dict(), bb.num_registers > 0), path)
    (tmp_path / "config.json").write_text(json.dumps({"embed_dim": bb.embed_dim, "num_heads": 2}))
    back = load_backbone(path)
    assert back.weights_info.format == "dinov2_official"
    assert back.pretrained_cfg.name == "dinov2"
    x = _input(bb)
    with torch.no_grad():
        a, b = bb.forward_features(x), back.forward_features(x)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-5)


def test_sidecar_config_gives_the_head_count(tmp_path):
    """Heads are not in the tensor shapes; a config.json next to the file supplies them."""
    from orthofm.models import BackboneConfig

    cfg = BackboneConfig(arch="vit_small_patch14_dinov2", img_size=28,
                         model_kwargs={"embed_dim": 96, "depth": 1, "num_heads": 3})
    bb = backbone_from_config(cfg).eval()
    _randomise(bb)
    torch.save(bb.model.state_dict(), tmp_path / "vit.pth")
    (tmp_path / "config.json").write_text(json.dumps({"embed_dim": 96, "num_heads": 3}))
    back = load_backbone(tmp_path / "vit.pth")
    assert back.config.model_kwargs["num_heads"] == 3
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        torch.testing.assert_close(back.forward_features(x)["patches"], bb.forward_features(x)["patches"])


def test_known_variant_tables_match_timm():
    from orthofm.models import dinov3, timm_vit

    assert dinov3.timm_signatures() == dinov3.KNOWN_VARIANTS
    assert timm_vit.timm_signatures() == timm_vit.KNOWN_VARIANTS


def _official_shapes(timm_model) -> dict:
    """Meta-device tensors with the official DINOv3 key layout of a timm Eva model (shapes only)."""
    sd = timm_model.state_dict()
    out = {}
    for k, v in sd.items():
        k2 = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        k2 = k2.replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2")
        if k2.endswith(("q_bias", "v_bias")):
            if k2.endswith("q_bias"):
                out[k2.replace("q_bias", "qkv.bias")] = torch.empty(3 * v.shape[0], device="meta")
            continue
        if ".mlp.fc2." in k2 and "mlp.w1.weight" in " ".join(out):
            k2 = k2.replace("mlp.fc2", "mlp.w3")
        out[k2] = v
    head_dim = timm_model.embed_dim // timm_model.blocks[0].attn.num_heads
    out["rope_embed.periods"] = torch.empty(head_dim // 4, device="meta")
    return out


@pytest.mark.parametrize("name", sorted(__import__("orthofm.models.dinov3", fromlist=["x"]).KNOWN_VARIANTS))
def test_official_dinov3_arch_inference(name):
    """Official-layout shapes of every timm DINOv3 variant map back to that variant, without kwargs."""
    import timm

    from orthofm.models.dinov3 import eva_arch_for, official_signature

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    arch, kwargs = eva_arch_for(official_signature(_official_shapes(model)))
    assert (arch, kwargs) == (name, {})


def test_describe_arch():
    assert describe_arch(tiny_config("dinov3")) == "vit_small_patch16_dinov3_qkvb(embed_dim=32, depth=2, num_heads=2)"
    assert describe_arch(tiny_config("hf_dinov3_vit")).startswith("hf_dinov3_vit(hidden_size=32")
