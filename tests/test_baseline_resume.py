"""Supervised baselines resume: after a kill, and when a larger budget continues a budget-stopped run.

The ViT-from-scratch baseline needs hours of CPU to converge, longer than one working session, so its
training must survive interruption with the same trajectory as an uninterrupted run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orthofm.evaluate import baselines
from orthofm.evaluate.baselines import (
    BaselineCache,
    BaselineConfig,
    answers_for,
    baseline_key,
    entry_answers_for,
    load_image_tensors,
    train_baseline,
)
from orthofm.evaluate.splits import sample_fraction
from orthofm.heads.labels import load_labels

SIZE = 32
CFG = BaselineConfig(image_size=SIZE, max_epochs=3, patience=10, batch_size=8, precision="fp32", warmup_epochs=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def knees(shared_data):
    """About 40 real knee radiographs (patient-grouped sample) at 32 px, and a few test images."""
    train = load_labels(shared_data / "knee_kl" / "train")
    tr = train.subset(sample_fraction(train.y, train.patients, 0.015, seed=3))
    test = train.subset(sample_fraction(train.y, train.patients, 0.004, seed=11))
    return (load_image_tensors(tr.paths, SIZE, 0.5, 0.25, progress=False), tr.y, list(tr.patients),
            load_image_tensors(test.paths, SIZE, 0.5, 0.25, progress=False))


def _train(knees, cfg=CFG, checkpoint=None):
    images, y, groups, test = knees
    return train_baseline("resnet18", images, y, groups, test, 5, ordinal=True, config=cfg, seed=0,
                          checkpoint=checkpoint)


def test_a_killed_run_resumes_on_the_same_trajectory(knees, tmp_path, monkeypatch) -> None:
    straight = _train(knees)
    ckpt = tmp_path / "run.resume.pt"
    calls = {"n": 0}
    real_predict = baselines._predict

    def dies_in_epoch_two(*args, **kwargs):  # the held-out pass of epoch 2: epoch 1's state is on disk
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(baselines, "_predict", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        _train(knees, checkpoint=ckpt)
    monkeypatch.setattr(baselines, "_predict", real_predict)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    resumed = _train(knees, checkpoint=ckpt)
    assert resumed.epochs_run == straight.epochs_run == 3
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.best_held_out_nll == pytest.approx(straight.best_held_out_nll, abs=1e-9)
    np.testing.assert_allclose(resumed.probs, straight.probs, atol=1e-9)


def test_a_larger_budget_continues_a_budget_stopped_run(knees, tmp_path) -> None:
    ckpt = tmp_path / "run.resume.pt"
    first = _train(knees, BaselineConfig(**{**CFG.__dict__, "max_epochs": 1}), checkpoint=ckpt)
    assert (first.epochs_run, first.converged, first.stop_reason) == (1, False, "max_epochs (1)")
    again = _train(knees, BaselineConfig(**{**CFG.__dict__, "max_epochs": 1}), checkpoint=ckpt)
    assert again.epochs_run == 1  # the same budget trains no further epoch
    np.testing.assert_allclose(again.probs, first.probs, atol=1e-9)
    continued = _train(knees, checkpoint=ckpt)
    straight = _train(knees)
    assert continued.epochs_run == 3
    np.testing.assert_allclose(continued.probs, straight.probs, atol=1e-9)
    assert continued.cpu_minutes > first.cpu_minutes  # the compute of both sessions is counted


def test_a_checkpoint_of_another_run_is_ignored(knees, tmp_path) -> None:
    ckpt = tmp_path / "run.resume.pt"
    _train(knees, BaselineConfig(**{**CFG.__dict__, "max_epochs": 1, "lr_resnet": 3e-3}), checkpoint=ckpt)
    fresh = _train(knees, BaselineConfig(**{**CFG.__dict__, "max_epochs": 1}), checkpoint=ckpt)
    alone = _train(knees, BaselineConfig(**{**CFG.__dict__, "max_epochs": 1}))
    np.testing.assert_allclose(fresh.probs, alone.probs, atol=1e-9)
    ckpt.write_bytes(b"torn")
    torn = _train(knees, BaselineConfig(**{**CFG.__dict__, "max_epochs": 1}), checkpoint=ckpt)
    np.testing.assert_allclose(torn.probs, alone.probs, atol=1e-9)


def test_budgets_are_not_part_of_the_key_but_decide_whether_a_run_answers() -> None:
    data = {"train": "a", "test": "b"}
    key = baseline_key("vit_random", 1.0, 0, data=data, config=BaselineConfig(max_cpu_minutes=40), arch="vit_small",
                       ordinal=True)
    assert key == baseline_key("vit_random", 1.0, 0, data=data, config=BaselineConfig(max_cpu_minutes=400),
                               arch="vit_small", ordinal=True)
    assert key != baseline_key("vit_random", 1.0, 0, data=data, config=BaselineConfig(lr_vit=1e-4),
                               arch="vit_small", ordinal=True)
    had = {"max_epochs": 60, "max_minutes": 720, "max_cpu_minutes": 40}
    assert answers_for(True, had, BaselineConfig(max_epochs=60, max_cpu_minutes=400))  # converged stands
    assert not answers_for(False, had, BaselineConfig(max_epochs=60, max_minutes=720, max_cpu_minutes=400))
    assert not answers_for(False, had, BaselineConfig(max_epochs=60, max_minutes=720, max_cpu_minutes=None))
    assert answers_for(False, had, BaselineConfig(max_epochs=60, max_minutes=720, max_cpu_minutes=40))
    assert answers_for(False, had, BaselineConfig(max_epochs=10, max_minutes=60, max_cpu_minutes=20))


def test_cache_claim_trains_again_when_the_entry_does_not_answer(tmp_path) -> None:
    cache = BaselineCache(tmp_path, poll_seconds=0.05)
    run = {"training": {"converged": False}}
    cache.put("vit_random", "k1", run, np.full((2, 5), 0.2), np.array([0, 1]),
              fields={"config": {"max_epochs": 60, "max_minutes": 720, "max_cpu_minutes": 40}})
    bigger = BaselineConfig(max_epochs=60, max_minutes=720, max_cpu_minutes=400)
    with cache.claim("vit_random", "k1", accept=lambda e: entry_answers_for(e, bigger)) as entry:
        assert entry is None  # the caller holds the lock and continues the run
        assert cache.path("vit_random", "k1").with_suffix(".lock").exists()
    same = BaselineConfig(max_epochs=60, max_minutes=720, max_cpu_minutes=40)
    with cache.claim("vit_random", "k1", accept=lambda e: entry_answers_for(e, same)) as entry:
        assert entry is not None
