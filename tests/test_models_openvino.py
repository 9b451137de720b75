"""The OpenVINO fast path: same features as torch, converted once per weights, and a fallback that always works."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orthofm.heads import runtime
from orthofm.heads.features import embed_batch
from orthofm.models import BackboneConfig, PreprocessConfig, backbone_from_config

pytest.importorskip("openvino")
from orthofm.models.openvino_engine import OpenVINOFeatures


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = BackboneConfig(arch="vit_small_patch16_dinov3_qkvb", model_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 2},
                         preprocess=PreprocessConfig(mean=(0.5,) * 3, std=(0.25,) * 3))
    return backbone_from_config(cfg).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ORTHOFM_CACHE", str(tmp_path))
    monkeypatch.delenv("ORTHOFM_ENGINE", raising=False)
    return tmp_path / "openvino"


def test_default_model_features_match_float32_at_any_batch(private_cache: Path) -> None:
    from orthofm.heads.runtime import default_model_dir
    from orthofm.models import load_backbone

    bb = load_backbone(default_model_dir()).eval()
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        ref = bb.forward_features(x)
    ov = OpenVINOFeatures(bb, 224, precision="bf16")
    for batch in (x[:1], x):
        out = ov(batch)
        assert set(out) == set(ref) and all(out[k].shape == ref[k][: len(batch)].shape for k in out)
        assert all(rel(out[k], ref[k][: len(batch)]) < 1e-2 for k in out), {k: rel(out[k], ref[k][: len(batch)])
                                                                            for k in out}
    exact = OpenVINOFeatures(bb, 224, precision="f32")(x)
    assert all(rel(exact[k], ref[k]) < 1e-4 for k in ref)
    # one converted model per weights, input size and weight format (fp16 on disk for bf16, fp32 for f32)
    assert sorted(p.name.rsplit("-", 1)[1] for p in private_cache.iterdir()) == ["fp16w", "fp32w"]


def test_converted_once_then_read_back_and_damage_is_repaired(private_cache: Path, monkeypatch) -> None:
    import openvino as ov

    bb = tiny()
    x = torch.randn(2, 3, 32, 32)
    first = OpenVINOFeatures(bb, 32)(x)
    calls = []
    real = ov.convert_model
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = OpenVINOFeatures(bb, 32)(x)
    assert calls == [] and all(torch.equal(first[k], again[k]) for k in first)
    (folder,) = private_cache.iterdir()
    (folder / "model.xml").write_text("<not a model")
    repaired = OpenVINOFeatures(bb, 32)(x)
    assert calls == [1] and all(torch.equal(first[k], repaired[k]) for k in first)
    other = tiny(seed=1)  # other weights never reuse this conversion
    OpenVINOFeatures(other, 32)
    assert calls == [1, 1] and len(list(private_cache.iterdir())) == 2
    with pytest.raises(ValueError, match="expected"):
        OpenVINOFeatures(bb, 32)(torch.randn(1, 3, 48, 48))


def test_dispatch_follows_engine_flag_mode_and_weight_changes(monkeypatch) -> None:
    bb = tiny()
    x = torch.randn(2, 3, 32, 32)
    bf16 = torch.bfloat16
    from orthofm.utils import runtime as cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda flags=None: False)
    assert runtime.inference_engine(bf16) == "torch"  # emulated bf16: OpenVINO's was far slower than torch's
    monkeypatch.setattr(cpu, "has_native_bf16", lambda flags=None: True)
    assert runtime.inference_engine(bf16) == "openvino" and runtime.inference_engine(torch.float32) == "torch"
    with torch.inference_mode():
        fast = runtime.forward_features(bb, x, bf16)
    assert isinstance(runtime._openvino_for(bb, x, bf16), OpenVINOFeatures)
    with torch.inference_mode(), torch.autocast("cpu", dtype=bf16):
        eager = bb.forward_features(x)
    assert all(rel(fast[k], eager[k]) < 2e-2 for k in fast)
    monkeypatch.setenv("ORTHOFM_ENGINE", "torch")
    assert runtime._openvino_for(bb, x, bf16) is None
    monkeypatch.setenv("ORTHOFM_ENGINE", "tensorrt")
    with pytest.raises(ValueError, match="ORTHOFM_ENGINE"):
        runtime.inference_engine(bf16)
    monkeypatch.delenv("ORTHOFM_ENGINE")
    bb.train()
    assert runtime._openvino_for(bb, x, bf16) is None  # training runs in torch
    bb.eval()
    before = runtime._openvino_for(bb, x, bf16)
    with torch.no_grad():
        next(bb.parameters()).add_(1.0)  # weights changed in place (e.g. fine-tuning): convert again
    after = runtime._openvino_for(bb, x, bf16)
    assert after is not before
    feats = embed_batch(bb, x, bf16)
    with torch.inference_mode():
        ref = torch.cat([bb.forward_features(x)["cls"], bb.forward_features(x)["patches"].flatten(1, 2).mean(1)], 1)
    assert rel(torch.from_numpy(feats), ref) < 2e-2


def test_a_backbone_that_served_can_still_be_copied_and_pickled(monkeypatch) -> None:
    import copy
    import pickle

    monkeypatch.setenv("ORTHOFM_ENGINE", "openvino")  # whatever this CPU would choose for bf16
    bb = tiny()
    x = torch.randn(1, 3, 32, 32)
    runtime.forward_features(bb, x, torch.bfloat16)
    assert runtime._openvino_for(bb, x, torch.bfloat16) is not None
    clone = copy.deepcopy(bb)  # what fine-tuning does
    assert clone.__dict__["_orthofm_openvino"] == {}
    assert pickle.loads(pickle.dumps(bb)).__dict__["_orthofm_openvino"] == {}
    out = runtime.forward_features(clone, x, torch.bfloat16)
    assert out["cls"].shape == (1, 64)


def test_stand_ins_keep_their_own_routing() -> None:
    """The app's batched view looks like a backbone but is not a module: its forward_features must be called."""
    bb = tiny()
    calls = []

    class View:
        def __getattr__(self, name):
            return getattr(bb, name)

        def forward_features(self, x):
            calls.append(x.shape[0])
            return bb.forward_features(x)

    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        runtime.forward_features(View(), x, torch.bfloat16)
    assert calls == [2] and runtime._openvino_for(View(), x, torch.bfloat16) is None
