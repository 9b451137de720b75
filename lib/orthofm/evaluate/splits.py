"""Patient-grouped sampling and splits: one patient's images always land on one side.

Left and right knees of one patient are strongly correlated; putting them on both sides of a split leaks
labels and inflates every number. Every function here works on patients, stratified by the patient's
highest class index (so rare severe grades are spread over the folds and kept in small fractions), and
returns image indices.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = [
    "assert_disjoint_groups",
    "group_holdout",
    "group_kfold",
    "patients_by_stratum",
    "sample_fraction",
]


def patients_by_stratum(y: Sequence[int] | np.ndarray, groups: Sequence[str]) -> dict[int, list[str]]:
    """Patients per stratum; a patient's stratum is the highest class index among their images."""
    y = np.asarray(y)
    if len(y) != len(groups):
        raise ValueError(f"{len(y)} labels but {len(groups)} group ids")
    top: dict[str, int] = {}
    for label, g in zip(y.tolist(), groups):
        top[g] = max(top.get(g, label), label)
    strata: dict[int, list[str]] = defaultdict(list)
    for g in sorted(top):
        strata[top[g]].append(g)
    return dict(sorted(strata.items()))


def _indices_of(groups: Sequence[str], chosen: set[str]) -> np.ndarray:
    return np.asarray([i for i, g in enumerate(groups) if g in chosen], dtype=np.int64)


def sample_fraction(
    y: Sequence[int] | np.ndarray, groups: Sequence[str], fraction: float, seed: int
) -> np.ndarray:
    """Indices of a patient-grouped, stratified sample holding about ``fraction`` of the images.

    Per stratum, ``max(1, round(fraction * n_patients))`` patients are drawn, so every stratum (and hence
    every class that is some patient's top grade) stays represented even at 1 %.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(len(groups), dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for patients in patients_by_stratum(y, groups).values():
        n = max(1, round(fraction * len(patients)))
        order = rng.permutation(len(patients))[:n]
        chosen.update(patients[i] for i in order)
    return _indices_of(groups, chosen)


def group_kfold(
    y: Sequence[int] | np.ndarray, groups: Sequence[str], n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified patient-grouped K folds ``[(train_idx, val_idx), ...]``; ``n_splits`` capped by the patients."""
    strata = patients_by_stratum(y, groups)
    n_patients = sum(len(p) for p in strata.values())
    k = min(int(n_splits), n_patients)
    if k < 2:
        raise ValueError(f"need at least 2 patients for a grouped split, got {n_patients}")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for patients in strata.values():
        for j, i in enumerate(rng.permutation(len(patients))):
            fold_of[patients[i]] = (offset + j) % k
        offset += len(patients)  # keeps fold sizes balanced across strata
    fold = np.asarray([fold_of[g] for g in groups])
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def group_holdout(
    y: Sequence[int] | np.ndarray, groups: Sequence[str], holdout: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split into (fit, held-out) image indices with about ``holdout`` of the patients held out per stratum.

    A stratum with a single patient stays entirely on the fit side (a model cannot learn a class it never
    sees, while a held-out set can do without one); at least one patient is held out overall.
    """
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    strata = patients_by_stratum(y, groups)
    if sum(len(p) for p in strata.values()) < 2:
        raise ValueError("need at least 2 patients to hold some out")
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    largest: list[str] = max(strata.values(), key=len)
    for patients in strata.values():
        if len(patients) < 2:
            continue
        n = min(len(patients) - 1, max(1, math.floor(holdout * len(patients) + 0.5)))
        held.update(patients[i] for i in rng.permutation(len(patients))[:n])
    if not held:
        held.add(largest[int(rng.integers(len(largest)))])
    hold_idx = _indices_of(groups, held)
    fit_idx = np.setdiff1d(np.arange(len(groups)), hold_idx)
    return fit_idx, hold_idx


def assert_disjoint_groups(groups: Sequence[str], a: np.ndarray, b: np.ndarray) -> None:
    """Raise if any patient has images on both sides of a split."""
    shared = {groups[i] for i in a} & {groups[i] for i in b}
    if shared:
        raise AssertionError(f"{len(shared)} patients on both sides of a split, e.g. {sorted(shared)[:3]}")
