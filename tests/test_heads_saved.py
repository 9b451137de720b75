"""A head trained on a fraction of real labels saves, loads and predicts exactly the same numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from orthofm.evaluate.splits import sample_fraction
from orthofm.heads import EmbeddingStore, fit_head, load_head
from orthofm.heads.calibration import fit_temperature, softmax
from orthofm.heads.labels import load_labels
from orthofm.models import PreprocessConfig, create_backbone

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on the shared 2-core machine two threads under load were ~25x slower (measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def features(shared_data, tmp_path_factory):
    """Features of ~5 % of the KL training patients (stratified, grouped) and of 40 validation knees."""
    torch.manual_seed(0)
    bb = create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=SIZE, preprocess=PreprocessConfig(input_size=SIZE))
    train = load_labels(shared_data / "knee_kl" / "train")
    sub = train.subset(sample_fraction(train.y, train.patients, 0.05, seed=0))
    val = load_labels(shared_data / "knee_kl" / "val")
    val = val.subset(np.arange(0, len(val), max(1, len(val) // 40))[:40])
    store = EmbeddingStore(tmp_path_factory.mktemp("emb"), bb, progress=False)
    return sub, store.embed_paths(sub.paths), val, store.embed_paths(val.paths), store.backbone_id


@pytest.mark.parametrize("kind", ["probe", "knn", "mlp"])
def test_head_roundtrip_same_numbers(tmp_path, features, kind: str) -> None:
    sub, x, val, x_val, bb_id = features
    params = {"probe": {"cs": (1e-3, 1e-1), "folds": 3}, "mlp": {"max_epochs": 15}}.get(kind)
    head = fit_head(x, sub.y, sub.patients, sub.classes, kind=kind, task="knee_kl", ordinal=True, seed=0,
                    backbone={"id": bb_id}, label_fraction=0.05, data={"labels": sub.source}, params=params)
    before = head.predict_proba(x_val)
    assert before.shape == (len(val), 5) and np.allclose(before.sum(axis=1), 1)
    folder = head.save(tmp_path / "knee_kl")
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "head.safetensors"]
    assert b"pickle" not in (folder / "head.safetensors").read_bytes()[:2000]
    loaded = load_head(folder)
    after = loaded.predict_proba(x_val)
    assert np.array_equal(before, after)
    assert np.array_equal(head.predict(x_val), loaded.predict(x_val))
    card = json.loads((folder / "card.json").read_text())
    assert card["task"] == "knee_kl" and card["kind"] == kind and card["classes"] == ["0", "1", "2", "3", "4"]
    assert card["ordinal"] is True and card["backbone"]["id"] == bb_id and card["label_fraction"] == 0.05
    assert card["calibration"]["temperature"] > 0 and "train_out_of_sample" in card["metrics"]


def test_temperature_is_fitted_on_held_out_logits() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    logits = np.eye(3)[y] * 2.0 + rng.normal(0, 1.5, (400, 3))
    over = logits * 4  # an over-confident model: the fitted T must undo the factor ~4
    cal = fit_temperature(over, y)
    assert 3.0 < cal.temperature < 5.5 and cal.nll_after < cal.nll_before
    assert np.array_equal(softmax(over, cal.temperature).argmax(1), over.argmax(1))  # never changes the grade
    tiny = fit_temperature(over[:5], y[:5])
    assert tiny.temperature == 1.0 and "not calibrated" in tiny.note


def test_load_head_rejects_a_non_head_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a head folder"):
        load_head(tmp_path)
    (tmp_path / "card.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "head.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not an OrthoFM head card"):
        load_head(tmp_path)
