"""Last-block fine-tuning: split forward is exact, training never touches the base, saved head reproduces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orthofm.evaluate.splits import sample_fraction
from orthofm.heads import GradePredictor, load_head
from orthofm.heads.embeddings import EmbeddingStore, backbone_id, read_pixels
from orthofm.heads.features import pool_tokens
from orthofm.heads.finetune import FinetuneConfig, prefix_tokens, suffix_features, train_finetune
from orthofm.heads.labels import load_labels
from orthofm.heads.train import finish_head
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
def data(shared_data):
    torch.manual_seed(0)
    bb = create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=SIZE, preprocess=PreprocessConfig(input_size=SIZE))
    train = load_labels(shared_data / "knee_kl" / "train")
    sub = train.subset(sample_fraction(train.y, train.patients, 0.02, seed=0))
    return bb.eval(), sub


def _batch(store: EmbeddingStore, paths) -> torch.Tensor:
    return torch.stack([store.prepare(read_pixels(p).array) for p in paths])


def test_prefix_then_suffix_equals_the_full_forward(data, tmp_path) -> None:
    bb, sub = data
    x = _batch(EmbeddingStore(tmp_path, bb, progress=False), sub.paths[:4])
    with torch.no_grad():
        full = pool_tokens(bb.forward_features(x))
        for start in (0, 6, 11):
            tokens, grid = prefix_tokens(bb, x, start)
            torch.testing.assert_close(suffix_features(bb, tokens, start, grid), full, rtol=1e-5, atol=1e-5)


def test_finetune_trains_a_copy_and_the_saved_head_reproduces(data, tmp_path) -> None:
    bb, sub = data
    base_id = backbone_id(bb)
    store = EmbeddingStore(tmp_path / "cache", bb, dtype=torch.float32, progress=False)
    cfg = FinetuneConfig(n_blocks=2, max_epochs=2, batch_size=16)
    tokens, grid = prefix_tokens(bb, _batch(store, sub.paths), len(bb.model.blocks) - cfg.n_blocks)
    head, fit = train_finetune(bb, tokens, grid, sub.y, sub.patients, 5, ordinal=True, config=cfg, seed=0)
    assert backbone_id(bb) == base_id, "fine-tuning must not modify the shared base backbone"
    assert fit.info["held_out"] > 0 and fit.logits.shape == (fit.info["held_out"], 5)
    names = {k.split(".")[3] for k in head.block_arrays if k.startswith("backbone.model.blocks.")}
    assert names == {"10", "11"} and "backbone.model.norm.weight" in head.block_arrays
    tuned = head.backbone_for(bb)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.parameters(), bb.parameters()))

    trained = finish_head(head, fit, sub.classes, task="knee_kl", ordinal=True, decode="argmax",
                          backbone={"id": base_id}, data={}, label_fraction=0.02, seed=0)
    folder = trained.save(tmp_path / "head")
    loaded = load_head(folder)
    assert loaded.card.kind == "finetune" and loaded.card.params["n_blocks"] == 2
    predictor = GradePredictor(bb, loaded, cache=tmp_path / "cache", dtype=torch.float32, progress=False)
    preds = predictor.predict_paths(sub.paths[:6])
    with torch.no_grad():
        feats = pool_tokens(tuned.forward_features(_batch(store, sub.paths[:6]))).numpy()
    np.testing.assert_allclose(preds.probabilities, trained.predict_proba(feats), rtol=1e-5, atol=1e-6)
    assert predictor.store.backbone_id != base_id  # tuned features live under their own id
