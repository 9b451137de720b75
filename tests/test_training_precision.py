"""Training precision: "auto" means bf16 only where the CPU multiplies it natively, and keys stay stable.

On a CPU without AVX512-BF16/AMX, bf16 autocast is emulated and a ViT-S training step was 2.9-3.6x slower than
float32 (benchmarks/bench_precision.py), so baselines, fine-tuning and pretraining must not force it there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from orthofm.evaluate.baselines import (
    BUDGET_FIELDS,
    CACHE_FORMAT,
    BaselineConfig,
    baseline_key,
    train_baseline,
)
from orthofm.heads.embeddings import EmbeddingStore, read_pixels
from orthofm.heads.finetune import FinetuneConfig, cached_prefix_tokens, prefix_tokens, train_finetune
from orthofm.heads.labels import load_labels
from orthofm.heads.runtime import precision_dtype
from orthofm.models import PreprocessConfig, create_backbone
from orthofm.ssl import PretrainConfig
from orthofm.utils import runtime
from orthofm.utils.runtime import resolve_precision

SIZE = 32


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_and_explicit_choices_pass_through(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.delenv("ORTHOFM_FORCE_FP32", raising=False)
    monkeypatch.setattr(runtime, "has_native_bf16", lambda flags=None: native)
    assert resolve_precision("auto") == ("bf16" if native else "fp32")
    assert precision_dtype("auto") == (torch.bfloat16 if native else torch.float32)
    assert resolve_precision("bf16") == "bf16" and resolve_precision("fp32") == "fp32"
    monkeypatch.setenv("ORTHOFM_FORCE_FP32", "1")
    assert resolve_precision("auto") == "fp32"


def test_a_misspelt_precision_fails_before_any_training() -> None:
    for bad in ("fp16", "BF16", "", "float32"):
        with pytest.raises(ValueError, match="precision"):
            resolve_precision(bad)
        with pytest.raises(ValueError, match="precision"):
            BaselineConfig(precision=bad)
        with pytest.raises(ValueError, match="precision"):
            PretrainConfig(precision=bad)


def _legacy_key(method: str, config: BaselineConfig, bf16: bool) -> str:
    """The key as written before ``precision`` replaced the ``bf16: bool`` field (committed reports hold these)."""
    settings = {k: v for k, v in asdict(config).items() if k not in BUDGET_FIELDS and k != "precision"}
    settings["bf16"] = bf16
    fields = {"format": CACHE_FORMAT, "method": method, "fraction": 1.0, "seed": 0, "data": {"train": "a"},
              "config": settings, "ordinal": True, "arch": None}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def test_baseline_keys_record_the_precision_a_run_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORTHOFM_FORCE_FP32", raising=False)

    def key(precision: str) -> str:
        return baseline_key("resnet18", 1.0, 0, data={"train": "a"}, config=BaselineConfig(precision=precision),
                            arch="vit_small", ordinal=True)

    assert key("bf16") == _legacy_key("resnet18", BaselineConfig(), bf16=True)  # every cached bf16 run still found
    assert key("fp32") == _legacy_key("resnet18", BaselineConfig(), bf16=False)
    assert key("bf16") != key("fp32")  # the numbers differ, so the runs are kept apart
    for native in (True, False):
        monkeypatch.setattr(runtime, "has_native_bf16", lambda flags=None, n=native: n)
        assert key("auto") == key("bf16" if native else "fp32")


@pytest.fixture(scope="module")
def knees(shared_data):
    train = load_labels(shared_data / "knee_kl" / "train")
    idx = np.concatenate([np.flatnonzero(train.y == c)[:6] for c in range(5)])
    return train.subset(idx)


def test_a_baseline_reports_the_precision_it_trained_in(knees) -> None:
    from orthofm.evaluate.baselines import load_image_tensors

    images = load_image_tensors(knees.paths, SIZE, 0.5, 0.25, progress=False)
    cfg = BaselineConfig(image_size=SIZE, max_epochs=1, patience=1, batch_size=8, warmup_epochs=1)
    for precision in ("fp32", "auto"):
        res = train_baseline("resnet18", images, knees.y, knees.patients, images[:4], 5,
                             config=BaselineConfig(**{**asdict(cfg), "precision": precision}), seed=0)
        assert res.precision == resolve_precision(precision)
        assert res.summary()["precision"] == res.precision and np.isfinite(res.probs).all()


def test_fine_tuning_runs_in_the_resolved_precision_and_records_it(knees, tmp_path) -> None:
    torch.manual_seed(0)
    bb = create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=SIZE, preprocess=PreprocessConfig(input_size=SIZE))
    bb.eval()
    store = EmbeddingStore(tmp_path, bb, dtype=torch.float32, progress=False)
    start = len(bb.model.blocks) - 2
    tokens, grid = cached_prefix_tokens(bb, store, knees.paths, start, batch_size=8, precision="fp32")
    x = torch.stack([store.prepare(read_pixels(p).array) for p in knees.paths])
    with torch.no_grad():
        exact, exact_grid = prefix_tokens(bb, x, start)
    assert tokens.dtype == torch.bfloat16 and grid == exact_grid  # kept in bf16: half the memory
    torch.testing.assert_close(tokens.float(), exact, rtol=1e-2, atol=1e-2)
    for precision in ("fp32", "auto"):
        head, _ = train_finetune(bb, tokens, grid, knees.y, knees.patients, 5, ordinal=True, seed=0,
                                 config=FinetuneConfig(n_blocks=2, max_epochs=1, batch_size=8, precision=precision))
        assert head.settings["precision"] == resolve_precision(precision)
