"""The label-efficiency protocol end to end at toy scale: same samples for all methods, report, resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from orthofm.evaluate.baselines import BaselineConfig
from orthofm.evaluate.protocol import ProtocolConfig, run_protocol
from orthofm.evaluate.splits import sample_fraction
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


def _csv(path, data) -> str:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([str(p), label] for p, label in zip(data.paths, data.labels))
    return str(path)


def test_protocol_report_and_resume(shared_data, tmp_path) -> None:
    train = load_labels(shared_data / "knee_kl" / "train")
    val = load_labels(shared_data / "knee_kl" / "val")
    tr = train.subset(sample_fraction(train.y, train.patients, 0.02, seed=5))
    te = val.subset(sample_fraction(val.y, val.patients, 0.03, seed=5))
    torch.manual_seed(0)
    bb = create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=SIZE, preprocess=PreprocessConfig(input_size=SIZE))
    cfg = ProtocolConfig(
        train=_csv(tmp_path / "train.csv", tr), test=_csv(tmp_path / "test.csv", te), out=str(tmp_path / "report"),
        task="knee_kl", fractions=(0.5, 1.0), seeds=2, heads=("probe", "knn"),
        head_params={"probe": {"cs": (1e-3, 1e-1), "folds": 3}}, baselines=("resnet18",),
        baseline_fractions=(1.0,), baseline_seeds=1,
        baseline=BaselineConfig(image_size=SIZE, max_epochs=2, patience=1, batch_size=16),
        cache=str(tmp_path / "cache"), command="pytest",
    )
    data = run_protocol(cfg, backbone=bb)
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} >= {"summary.md", "results.json", "label_efficiency.png",
                                               "confusion_matrix.png", "reliability.png"}
    runs = data["runs"]
    assert len(runs) == 2 * 2 * 2 + 1
    by_sample = {}
    for r in runs:  # every method trained on the very same labelled sample for a (fraction, seed)
        by_sample.setdefault((r["fraction"], r["seed"]), set()).add(r["n_train"])
        assert 0 <= r["metrics"]["accuracy"] <= 1 and "qwk" in r["metrics"] and "ece" in r["metrics"]
    assert all(len(v) == 1 for v in by_sample.values())
    base = next(r for r in runs if r["method"] == "resnet18")
    assert base["training"]["epochs_run"] >= 1 and base["training"]["cpu_minutes"] >= 0
    probe_half = next(s for s in data["summary"] if s["method"] == "probe" and s["fraction"] == 0.5)
    assert probe_half["n_seeds"] == 2 and set(probe_half["accuracy"]) == {"mean", "std", "min", "max"}
    md = (out / "summary.md").read_text()
    assert "ResNet-18 from scratch, 100 %" in md and "0.778" in md and "pytest" in md
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == len(runs) and saved["setup"]["n_test"] == len(te)

    again = run_protocol(cfg, backbone=bb)  # resume: nothing left to do, same numbers
    assert [r["metrics"]["accuracy"] for r in again["runs"]] == [r["metrics"]["accuracy"] for r in runs]
