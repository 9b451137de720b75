"""Bad weight files fail loudly and say why: corrupt, truncated, wrong architecture, pickled code."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from orthofm.models import WeightFormatError, backbone_from_config, load_backbone, save_orthofm
from orthofm.models.checkpoint import read_tensors
from orthofm.models.families import tiny_config


@pytest.fixture(scope="module")
def official(shared_weights):
    return shared_weights / "dinov3_official_format.pth"


class _RunsCode:
    """Unpickling this would run ``touch <marker>``: the classic malicious checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_random_bytes_are_rejected(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(os.urandom(4096).replace(b"PK", b"xx").lstrip(b"\x80") or b"x")
    with pytest.raises(WeightFormatError, match="not a weights file this importer knows"):
        load_backbone(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightFormatError, match="empty"):
        load_backbone(path)


@pytest.mark.parametrize("fraction", [0.5, 0.98])
def test_truncated_pth(official, tmp_path, fraction):
    data = official.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WeightFormatError, match="truncated or corrupt"):
        load_backbone(path)


def test_truncated_safetensors(official, tmp_path):
    from safetensors.torch import save_file

    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in read_tensors(official).items()}, str(full))
    data = full.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFormatError, match="damaged or truncated safetensors"):
        load_backbone(path)


def test_flipped_bytes_in_tensor_data(official, tmp_path):
    """torch.load alone would return silently wrong weights here; the zip CRCs catch it."""
    data = bytearray(official.read_bytes())
    middle = len(data) // 2  # inside some tensor's raw data
    data[middle: middle + 64] = bytes(255 - b for b in data[middle: middle + 64])
    path = tmp_path / "corrupt.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightFormatError, match=r"corrupt: checksum \(CRC\) mismatch"):
        load_backbone(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "raw-pickle"])
def test_pickled_code_is_refused_and_never_run(tmp_path, legacy):
    marker = tmp_path / "pwned"
    payload = {"cls_token": torch.zeros(1, 1, 8), "evil": _RunsCode(str(marker))}
    path = tmp_path / "evil.pth"
    if legacy:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(WeightFormatError, match="refused to load.*pickled Python objects") as info:
        load_backbone(path)
    assert "never executes code" in str(info.value)
    assert not marker.exists()


def test_wrong_architecture_names_shape_mismatches(official):
    with pytest.raises(WeightFormatError) as info:
        load_backbone(official, arch="vit_small_patch16_dinov3_qkvb")
    msg = str(info.value)
    assert "looks like DINOv3 official state dict" in msg
    assert "shape mismatch" in msg and "(96, 3, 16, 16)" in msg and "(384, 3, 16, 16)" in msg
    assert "150 missing key(s): blocks.2." in msg  # ViT-S has 12 blocks, the file 2 (15 keys per block)
    report = info.value.report
    assert len(report.missing) > 0 and len(report.mismatched) > 0


def test_missing_block_is_a_clear_error(official, tmp_path):
    sd = {k: v for k, v in read_tensors(official).items() if not k.startswith("blocks.1.mlp.fc2")}
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(WeightFormatError) as info:
        load_backbone(path)
    msg = str(info.value)
    assert "2 missing key(s): blocks.1.mlp.fc2.weight, blocks.1.mlp.fc2.bias" in msg


def test_extra_unknown_keys_are_not_silently_ignored(official, tmp_path):
    sd = dict(read_tensors(official)) | {"blocks.0.attn.extra_proj.weight": torch.zeros(4, 4)}
    path = tmp_path / "extra.pth"
    torch.save(sd, path)
    with pytest.raises(WeightFormatError, match="unexpected key"):
        load_backbone(path)


def test_nan_weights_are_rejected(official, tmp_path):
    sd = dict(read_tensors(official))
    sd["norm.weight"] = torch.full_like(sd["norm.weight"], float("nan"))
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(WeightFormatError, match="NaN"):
        load_backbone(path)


def test_unknown_layout_names_first_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(WeightFormatError, match="conv1.weight"):
        load_backbone(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(WeightFormatError, match="not a state dict"):
        load_backbone(path)


def test_hf_weights_file_without_its_folder(shared_weights, tmp_path):
    path = tmp_path / "model.safetensors"
    shutil.copy(shared_weights / "skelex_hf_vitmae_format" / "model.safetensors", path)
    with pytest.raises(WeightFormatError, match="pass the whole Hugging Face folder"):
        load_backbone(path)


def test_hf_weights_file_inside_its_folder_loads_the_folder(shared_weights):
    bb = load_backbone(shared_weights / "skelex_hf_vitmae_format" / "model.safetensors")
    assert bb.weights_info.format == "hf" and bb.has_mae_decoder


def test_hf_folder_with_wrong_config(shared_weights, tmp_path):
    folder = tmp_path / "skelex"
    shutil.copytree(shared_weights / "skelex_hf_vitmae_format", folder)
    os.chmod(folder, 0o755)
    cfg = folder / "config.json"
    os.chmod(cfg, 0o644)
    cfg.write_text(cfg.read_text().replace('"hidden_size": 64', '"hidden_size": 128'))
    with pytest.raises(WeightFormatError, match="looks like a Hugging Face ViTMAE") as info:
        load_backbone(folder)
    msg = str(info.value)
    assert "do not fit its config.json: 37 shape mismatch(es)" in msg
    assert "vit.embeddings.cls_token (file (1, 1, 64) vs model (1, 1, 128))" in msg
    assert len(info.value.report.mismatched) == 37


def test_unsupported_hf_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(WeightFormatError, match="model_type 'bert' is not supported"):
        load_backbone(tmp_path)


def test_folder_that_is_neither(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(WeightFormatError, match="neither an OrthoFM folder"):
        load_backbone(tmp_path)


def test_orthofm_folder_with_replaced_weights(tmp_path):
    bb = backbone_from_config(tiny_config("dinov3"))
    folder = save_orthofm(bb, tmp_path / "m", {"data": "none"}, dtype=torch.float32)
    weights = folder / "backbone.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10:] = b"\x00" * 10
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightFormatError, match="checksum differs"):
        load_backbone(folder)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(WeightFormatError, match="truncated or replaced"):
        load_backbone(folder)


def test_orthofm_card_from_the_future(tmp_path):
    bb = backbone_from_config(tiny_config("dinov3"))
    folder = save_orthofm(bb, tmp_path / "m", dtype=torch.float32)
    card = folder / "model_card.json"
    card.write_text(card.read_text().replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(WeightFormatError, match="newer than this OrthoFM understands"):
        load_backbone(folder)


def test_missing_path(tmp_path):
    with pytest.raises(WeightFormatError, match="no such file"):
        load_backbone(tmp_path / "nope.pth")
