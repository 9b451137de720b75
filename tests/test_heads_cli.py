"""`orthofm train-head` / `predict` / `embed` end to end on real knees with a tiny saved backbone."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from orthofm.cli import main
from orthofm.evaluate.splits import sample_fraction
from orthofm.heads import GradePredictor, load_head
from orthofm.heads.labels import load_labels
from orthofm.models import PreprocessConfig, create_backbone, load_backbone, save_orthofm

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The CLI sets its own thread count; keep it at one on the shared machine (see test_heads_embeddings)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ORTHOFM_NUM_THREADS", "1")
    n = torch.get_num_threads()
    yield
    mp.undo()
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    bb = create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=SIZE, preprocess=PreprocessConfig(input_size=SIZE))
    model = save_orthofm(bb, root / "model")
    train = load_labels(shared_data / "knee_kl" / "train")
    sub = train.subset(sample_fraction(train.y, train.patients, 0.03, seed=0))
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([str(p), label] for p, label in zip(sub.paths, sub.labels))
    images = root / "images"
    images.mkdir()
    for p in sorted((shared_data / "knee_kl" / "val" / "3").glob("*.png"))[:5]:
        (images / p.name).symlink_to(p)
    return root, model, sub, images


@pytest.fixture(scope="module")
def trained(setup):
    """`orthofm train-head` on half of the labels; the head goes next to the backbone by default."""
    root, model, _, _ = setup
    code = main(["train-head", "--task", "knee_kl", "--labels", str(root / "labels.csv"), "--fraction", "0.5",
                 "--weights", str(model), "--cache", str(root / "cache"),
                 "--params", '{"probe": {"cs": [0.001, 0.1], "folds": 3}}'])
    assert code == 0
    return model / "heads" / "knee_kl"


def test_train_head_then_predict_writes_the_right_columns(setup, trained) -> None:
    root, model, sub, images = setup
    cache, head_dir = root / "cache", trained
    card = json.loads((head_dir / "card.json").read_text())
    assert card["label_fraction"] == 0.5 and card["ordinal"] is True and card["kind"] == "probe"
    assert card["data"]["n_images"] < len(sub) and card["data"]["n_available"] == len(sub)

    out = root / "preds.csv"
    assert main(["predict", "--task", "knee_kl", "--images", str(images), "--out", str(out),
                 "--weights", str(model), "--cache", str(cache)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == ["path", "label", "p_0", "p_1", "p_2", "p_3", "p_4", "expected_grade"]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images.iterdir())
    probs = np.array([[float(r[f"p_{c}"]) for c in "01234"] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert all(r["label"] == str(int(np.argmax(p))) for r, p in zip(rows, probs))

    api = GradePredictor(load_backbone(model), load_head(head_dir), cache=cache).predict_paths(
        [r["path"] for r in rows])
    np.testing.assert_allclose(api.probabilities, probs, atol=1e-6)
    np.testing.assert_allclose(api.expected_grade, [float(r["expected_grade"]) for r in rows], atol=1e-4)


def test_predict_refuses_a_head_of_other_weights(setup, trained, tmp_path) -> None:
    _, _, _, images = setup
    torch.manual_seed(1)
    other = save_orthofm(create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=SIZE,
                                         preprocess=PreprocessConfig(input_size=SIZE)), tmp_path / "other")
    with pytest.raises(ValueError, match="trained on backbone"):
        GradePredictor(load_backbone(other), load_head(trained), cache=tmp_path / "c")
    assert main(["predict", "--task", "knee_kl", "--images", str(images), "--out", str(tmp_path / "p.csv"),
                 "--weights", str(other), "--head", str(trained)]) == 1
    assert not (tmp_path / "p.csv").exists()


def test_embed_fills_the_store_and_writes_an_index(setup, tmp_path) -> None:
    _, model, _, images = setup
    assert main(["embed", "--images", str(images), "--weights", str(model), "--out", str(tmp_path / "store")]) == 0
    index = list((tmp_path / "store").rglob("index.csv"))
    assert len(index) == 1
    with open(index[0], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and all((index[0].parent / r["key"][:2] / f"{r['key']}.npy").is_file() for r in rows)
