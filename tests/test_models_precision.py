"""Accuracy guard for the fast inference path: bf16 must not change what the annotator sees.

OrthoFM runs the backbone in bfloat16 (autocast) on CPUs with native bf16 matmul because it is several
times faster there. That is only acceptable if the features stay within 1e-2 relative error of float32 and
the default knee KL grader gives the same grade as float32 on (at least) 99 % of the real KL val images. Plain
bf16 features alone do not guarantee the second (a weak head leaves images within 0.3 % of a boundary), so the
product path re-decides near ties on float32 features (``orthofm.heads.precision``); this checks that path.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from orthofm.heads import GradePredictor, load_head
from orthofm.heads.embeddings import EmbeddingStore, list_items
from orthofm.heads.precision import RECHECK_MARGIN, decision_margin, margin_shift, near_ties
from orthofm.models import load_backbone

MODEL_DIR = Path(__file__).resolve().parents[1] / "monailabel_app" / "model" / "orthofm_vits16"
# the whole val split through bf16 and float32 forwards: on a CPU without native bf16 (emulated, ~3x slower) and a
# busy machine the shared fixture alone took 15 min
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def head():
    return load_head(MODEL_DIR / "heads" / "knee_kl")


@pytest.fixture(scope="module")
def val(shared_data: Path, tmp_path_factory: pytest.TempPathFactory, head) -> dict:
    items = list_items(shared_data / "knee_kl" / "val")
    assert len(items) > 800, "expected the whole KL val split"
    backbone = load_backbone(MODEL_DIR)
    cache = tmp_path_factory.mktemp("emb")
    predictor = GradePredictor(backbone, head, cache=cache, dtype=torch.bfloat16, batch_size=32, progress=False)
    fast = predictor.predict_paths(items)
    bf16 = predictor.store.embed_paths(items)  # cache hits: the vectors the fast path used
    # the head's own features: a fine-tuned head reads the backbone with its tuned blocks
    fp32 = EmbeddingStore(cache, predictor.store.backbone, dtype=torch.float32, batch_size=32,
                          progress=False).embed_paths(items)
    return {"fast": fast, "bf16": bf16, "fp32": fp32}


def test_bf16_features_within_one_percent_of_fp32(val: dict) -> None:
    fp32, bf16 = val["fp32"], val["bf16"]
    assert fp32.shape == bf16.shape and np.isfinite(bf16).all()
    assert not np.array_equal(fp32, bf16), "the bf16 path did not run in bf16"
    rel = np.linalg.norm(bf16 - fp32, axis=1) / np.linalg.norm(fp32, axis=1)
    assert rel.max() < 1e-2, f"worst relative feature error {rel.max():.4f} (median {np.median(rel):.4f})"


def test_fast_path_grades_match_fp32_on_val(val: dict, head) -> None:
    grade_fp32 = head.predict(val["fp32"])
    fast = val["fast"]
    agreement = float(np.mean(fast.index == grade_fp32))
    plain = float(np.mean(head.predict(val["bf16"]) == grade_fp32))
    rechecked = float(np.mean(fast.rechecked))
    assert agreement >= 0.99, (f"fast-path grades agree with float32 on only {agreement:.3%} of {len(grade_fp32)} "
                               f"val images (plain bf16 {plain:.3%}, re-checked {rechecked:.1%})")
    assert rechecked < 0.2, f"{rechecked:.1%} of images needed the float32 re-check: the fast path is not fast"
    p32 = head.predict_proba(val["fp32"])
    assert np.abs(p32 - fast.probabilities).max() < 0.05


def test_recheck_margin_covers_the_bf16_shift_of_the_margin(val: dict, head) -> None:
    """Images the re-check skips must be ones bf16 cannot flip: their margin moved less than the threshold."""
    shift = margin_shift(head, val["bf16"], val["fp32"])
    assert shift.max() < RECHECK_MARGIN[head.card.decode], f"margin moved by up to {shift.max():.4f}"


def test_decision_margin_units(head) -> None:
    probs = np.array([[0.50, 0.49, 0.01, 0.0, 0.0], [0.9, 0.05, 0.05, 0.0, 0.0]])
    argmax, expected = copy.deepcopy(head), copy.deepcopy(head)
    argmax.card.decode, expected.card.decode = "argmax", "expected"
    np.testing.assert_allclose(decision_margin(argmax, probs), [0.01, 0.85], atol=1e-12)
    # expected grades 0.51 and 0.15: 0.01 and 0.35 from the 0.5 rounding boundary
    np.testing.assert_allclose(decision_margin(expected, probs), [0.01, 0.35], atol=1e-12)
    assert list(near_ties(argmax, probs)) == [0] and list(near_ties(expected, probs)) == [0]
