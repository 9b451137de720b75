"""The app serves a fine-tuned head (last blocks tuned) with the same numbers as ``orthofm predict``.

The shared engine runs the frozen backbone; a fine-tuned head needs its own tuned blocks. Serving it on the
frozen features would give other (wrong) probabilities, so the test checks the app against the library's
``GradePredictor`` and that the frozen features would indeed have given different ones.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_app_harness import ServerProcess, build_studies

from orthofm.heads import EmbeddingStore, GradePredictor, load_head
from orthofm.heads.embeddings import read_pixels
from orthofm.heads.finetune import FinetuneConfig, cached_prefix_tokens, train_finetune
from orthofm.heads.labels import load_labels
from orthofm.heads.train import finish_head
from orthofm.models import load_backbone

DEFAULT = Path(__file__).resolve().parents[1] / "monailabel_app" / "model" / "orthofm_vits16"


@pytest.fixture(scope="module")
def weights_with_finetuned_head(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The default backbone's files plus a knee_kl head with its last block fine-tuned (1 epoch, 30 knees)."""
    folder = tmp_path_factory.mktemp("weights") / "orthofm_vits16"
    folder.mkdir()
    for f in DEFAULT.iterdir():
        if f.is_file():
            os.symlink(f, folder / f.name)
    torch.manual_seed(0)
    bb = load_backbone(DEFAULT).eval()
    train = load_labels(shared_data / "knee_kl" / "train")
    idx = np.concatenate([np.flatnonzero(train.y == c)[:6] for c in range(5)])
    sub = train.subset(idx)
    store = EmbeddingStore(tmp_path_factory.mktemp("cache"), bb, dtype=torch.float32, progress=False)
    cfg = FinetuneConfig(n_blocks=1, max_epochs=1, batch_size=10, lr_blocks=1e-3, lr_head=1e-2)
    start = len(bb.model.blocks) - cfg.n_blocks
    tokens, grid = cached_prefix_tokens(bb, store, sub.paths, start, batch_size=10)
    head, fit = train_finetune(bb, tokens, grid, sub.y, sub.patients, 5, ordinal=True, config=cfg, seed=0)
    trained = finish_head(head, fit, sub.classes, task="knee_kl", ordinal=True, decode="argmax",
                          backbone={"id": store.backbone_id, "arch": bb.arch}, data={"n_train": len(sub)},
                          label_fraction=0.01, seed=0)
    trained.save(folder / "heads" / "knee_kl")
    return folder


def test_the_app_grades_with_the_tuned_blocks_like_orthofm_predict(
    tmp_path: Path, shared_data: Path, weights_with_finetuned_head: Path,
) -> None:
    studies = tmp_path / "studies"
    ids = build_studies(studies, shared_data, per_grade=1, mri_slices=2)
    srv = ServerProcess(studies=studies, workdir=tmp_path,
                        conf={"weights": str(weights_with_finetuned_head), "models": "knee_kl,embedding"}).start()
    try:
        with srv.client() as http:
            n_images = len(http.get("/datastore/?output=all").json()["objects"])
            deadline = time.monotonic() + 600
            while http.get("/info/").json()["orthofm"]["embeddings"]["indexed"] < n_images:
                assert time.monotonic() < deadline, "background embedder did not index every image"
                time.sleep(2)
            # uncertainty needs the head's probabilities on cached (frozen) embeddings: not for a tuned head
            r = http.post("/activelearning/uncertainty", json={"reserve_seconds": 0})
            assert r.status_code == 200, r.text
            picked = r.json()
            assert picked["fallback"] == "coreset" and "fine-tuned" in picked["note"], picked
            image = ids["png"][2]
            r = http.post("/infer/knee_kl", params={"image": image, "output": "json"}, data={"params": "{}"})
            assert r.status_code == 200, r.text
            out = r.json()
            r = http.post("/infer/embedding", params={"image": image, "output": "json"}, data={"params": "{}"})
            assert r.status_code == 200, r.text
            frozen_vec = np.asarray(r.json()["embedding"], dtype=np.float32)
    finally:
        srv.kill()
    assert out["head"]["kind"] == "finetune"
    served = np.asarray([out["probabilities"][c] for c in out["label_names"]])

    head = load_head(weights_with_finetuned_head / "heads" / "knee_kl")
    path = next(studies.glob(f"{image}.*"))
    predictor = GradePredictor(load_backbone(DEFAULT).eval(), head, cache=tmp_path / "lib_cache", progress=False)
    expected = predictor.predict_paths([path]).probabilities[0]
    np.testing.assert_allclose(served, expected, atol=2e-3)

    # the frozen features (what the embedding task and active learning use) would grade differently
    base = EmbeddingStore(tmp_path / "frozen", load_backbone(DEFAULT).eval(), dtype=torch.float32, progress=False)
    frozen = base.embed_arrays([read_pixels(path).array])
    np.testing.assert_allclose(frozen_vec, frozen[0], rtol=2e-2, atol=2e-2)
    assert np.abs(head.predict_proba(frozen)[0] - expected).max() > 1e-2
    assert json.dumps(out["head"]["metrics"])  # the card's metrics travel with the grade
