"""The protocol never puts one patient's knees on both sides of a split (real knee KL file names)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from orthofm.evaluate.splits import (
    assert_disjoint_groups,
    group_holdout,
    group_kfold,
    patients_by_stratum,
    sample_fraction,
)
from orthofm.heads.labels import load_labels, patient_id_from_path


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on the shared 2-core machine two threads under load were ~25x slower (measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def knee_train(shared_data):
    return load_labels(shared_data / "knee_kl" / "train")


def test_patient_id_from_knee_file_names(knee_train) -> None:
    assert patient_id_from_path("/x/9003658L.png") == "9003658"
    assert patient_id_from_path("9003658R.png") == "9003658"
    assert patient_id_from_path("scan_001.dcm") == "scan_001"
    counts = Counter(knee_train.patients)
    assert max(counts.values()) == 2  # left + right knee at most
    two_knees = [p for p, n in counts.items() if n == 2]
    assert len(two_knees) > 100  # the data really has bilateral patients, so the test below can fail


def _patients_whole(groups: list[str], idx: np.ndarray) -> bool:
    chosen = {groups[i] for i in idx}
    return sorted(idx.tolist()) == [i for i, g in enumerate(groups) if g in chosen]


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.10, 0.25, 0.50])
def test_fraction_sample_takes_whole_patients(knee_train, fraction: float) -> None:
    y, groups = knee_train.y, knee_train.patients
    for seed in range(3):
        idx = sample_fraction(y, groups, fraction, seed)
        assert _patients_whole(groups, idx)
        assert abs(len(idx) / len(y) - fraction) < 0.02 + 2 * len(patients_by_stratum(y, groups)) / len(y)
        assert set(y[idx].tolist()) == set(range(5)), "every grade stays represented, even at 1 %"
        rest = np.setdiff1d(np.arange(len(y)), idx)
        assert_disjoint_groups(groups, idx, rest)
    assert not np.array_equal(sample_fraction(y, groups, fraction, 0), sample_fraction(y, groups, fraction, 1))


def test_kfold_and_holdout_keep_patients_together(knee_train) -> None:
    y, groups = knee_train.y, knee_train.patients
    sub = sample_fraction(y, groups, 0.1, 0)
    ys, gs = y[sub], [groups[i] for i in sub]
    folds = group_kfold(ys, gs, 5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen.tolist()) == list(range(len(ys)))  # every image validated exactly once
    for tr, va in folds:
        assert_disjoint_groups(gs, tr, va)
    fit, hold = group_holdout(ys, gs, 0.2, seed=3)
    assert_disjoint_groups(gs, fit, hold)
    assert 0.1 < len(hold) / len(ys) < 0.3
    assert len(np.intersect1d(fit, hold)) == 0 and len(fit) + len(hold) == len(ys)


def test_disjointness_check_catches_a_split_patient() -> None:
    groups = ["a", "a", "b", "c"]
    with pytest.raises(AssertionError, match="both sides"):
        assert_disjoint_groups(groups, np.array([0, 2]), np.array([1, 3]))


def test_protocol_refuses_patients_in_train_and_test(tmp_path, shared_data) -> None:
    """A test set sharing patients with the training set is an error, not a number."""
    from orthofm.evaluate.protocol import ProtocolConfig, run_protocol
    from orthofm.models import create_backbone

    src = sorted((shared_data / "knee_kl" / "train" / "0").glob("*.png"))[:6]
    rows = "path,label\n" + "".join(f"{p},0\n" for p in src)
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "test.csv").write_text("path,label\n" + f"{src[0]},0\n")
    cfg = ProtocolConfig(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), out=str(tmp_path / "r"),
                         heads=("probe",), baselines=(), cache=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="both the training and the test split"):
        run_protocol(cfg, backbone=create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=32))
